"""Audit Log filters: parsed from the query string, validated per field, turned into SQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from portal.audit.actions import Action, Category
from portal.audit.models import AuditEvent
from portal.events import OUTCOMES

# Every category and action the code emits, as the Type menu offers them (in Action order);
# tests/test_audit_actions.py holds every emit() to an Action. A well-formed type not in the
# list still filters (events of a renamed action stay findable), and the page says it is not
# one the portal records.
CATEGORIES = tuple(Category)
ACTIONS = tuple(Action)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_ID = 2**63 - 1
FILTER_FIELDS = ("type", "actor", "outcome", "from", "to")
PAGE_FIELDS = ("before", "after", "limit")
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class AuditFilter:
    """What the Audit Log shows: the filters, and which page of their newest-first list."""

    type: str | None = None
    actor: str | None = None
    outcome: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_LIMIT
    errors: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def filter_errors(self) -> dict[str, str]:
        """Errors of the filters themselves (an export ignores the page fields)."""
        return {k: v for k, v in self.errors.items() if k in FILTER_FIELDS}

    @property
    def unknown_type(self) -> bool:
        """Tell whether the type filter names no category or action the portal records."""
        return bool(self.type) and self.type not in CATEGORIES and self.type not in ACTIONS

    @property
    def is_filtered(self) -> bool:
        """Tell whether any filter (not just a page position) is set."""
        return any(self.filter_args().values())

    def filter_args(self) -> dict[str, str]:
        """The filters as query arguments, empty ones left out."""
        args = {
            "type": self.type,
            "actor": self.actor,
            "outcome": self.outcome,
            "from": self.date_from.isoformat() if self.date_from else None,
            "to": self.date_to.isoformat() if self.date_to else None,
        }
        return {k: v for k, v in args.items() if v}

    def page_args(self, *, before: int | None = None, after: int | None = None) -> dict[str, Any]:
        """Query arguments of a page of these filters (the limit is kept when not default)."""
        args: dict[str, Any] = self.filter_args()
        if self.limit != DEFAULT_LIMIT:
            args["limit"] = self.limit
        if before is not None:
            args["before"] = before
        if after is not None:
            args["after"] = after
        return args

    def first_page(self) -> AuditFilter:
        """The same filters from the newest event."""
        return replace(self, before=None, after=None)


def _int(raw: str, low: int, high: int) -> int | None:
    """Parse a whole number within bounds, or None."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if low <= value <= high else None


def _date(raw: str) -> date | None:
    """Parse a YYYY-MM-DD date, or None."""
    if not _DATE.fullmatch(raw):
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def parse_filters(args: Mapping[str, str]) -> AuditFilter:
    """Read and validate the query arguments; each bad one gets a message under its name."""
    raw = {name: (args.get(name) or "").strip() for name in FILTER_FIELDS + PAGE_FIELDS}
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}

    kind = raw["type"]
    if kind and (len(kind) > 100 or not _TYPE.fullmatch(kind)):
        errors["type"] = "Type must be a category such as BYOK or an action such as BYOK.enabled."
    else:
        values["type"] = kind or None

    actor = raw["actor"]
    if len(actor) > 320:
        errors["actor"] = "Actor is at most 320 characters."
    elif not actor.isprintable():
        errors["actor"] = "Actor contains control characters; no actor has them."
    else:
        values["actor"] = actor or None

    outcome = raw["outcome"]
    if outcome and outcome not in OUTCOMES:
        errors["outcome"] = f"Outcome must be one of: {', '.join(OUTCOMES)}."
    else:
        values["outcome"] = outcome or None

    for name, key, label in (("from", "date_from", "From"), ("to", "date_to", "To")):
        if not raw[name]:
            continue
        parsed = _date(raw[name])
        if parsed is None:
            errors[name] = f"{label} must be a date written YYYY-MM-DD, e.g. 2026-01-31."
        else:
            values[key] = parsed
    start, end = values.get("date_from"), values.get("date_to")
    if start and end and end < start:
        errors["to"] = "To is before From: the date range would select nothing."

    for name in ("before", "after"):
        if not raw[name]:
            continue
        cursor = _int(raw[name], 1, MAX_ID)
        if cursor is None:
            errors[name] = "The page position is not valid; start again from the newest events."
        else:
            values[name] = cursor
    if values.get("before") and values.get("after"):
        errors["after"] = "A page is older (before) or newer (after) than an event, not both."

    if raw["limit"]:
        limit = _int(raw["limit"], 1, MAX_LIMIT)
        if limit is None:
            errors["limit"] = f"Events per page must be a whole number from 1 to {MAX_LIMIT}."
        else:
            values["limit"] = limit
    return AuditFilter(**values, errors=errors)


def conditions(company_id: uuid.UUID, f: AuditFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses of the filters, always scoped to one organisation."""
    where: list[ColumnElement[bool]] = [AuditEvent.company_id == company_id]
    if f.type:
        category, _, action = f.type.partition(".")
        # The category is also named for an action so the (company, category, id) index serves.
        where.append(AuditEvent.category == category)
        if action:
            where.append(AuditEvent.action == f.type)
    if f.actor:
        where.append(AuditEvent.actor_label == f.actor)
    if f.outcome:
        where.append(AuditEvent.outcome == f.outcome)
    if f.date_from:
        where.append(AuditEvent.occurred_at >= datetime.combine(f.date_from, time(), UTC))
    if f.date_to and f.date_to < date.max:  # up to the last representable day: no bound
        end = datetime.combine(f.date_to + timedelta(days=1), time(), UTC)
        where.append(AuditEvent.occurred_at < end)
    return where


def sort_key(f: AuditFilter) -> tuple[InstrumentedAttribute, ...]:
    """The columns that order events, newest first being the reverse.

    Within one organisation, id order is chain order and time order too (emit stamps the
    time while holding the chain head). A date range walks the (company, time, id) index, so
    its pages are keyed by (occurred_at, id); every other filter walks an index ending in id.
    """
    if f.date_from or f.date_to:
        return (AuditEvent.occurred_at, AuditEvent.id)
    return (AuditEvent.id,)


def beyond(f: AuditFilter, key: tuple[Any, ...], *, older: bool) -> ColumnElement[bool]:
    """Events strictly older (or newer) than a position in the sort key."""
    columns = sort_key(f)
    left = tuple_(*columns) if len(columns) > 1 else columns[0]
    right = tuple_(*key) if len(columns) > 1 else key[0]
    return left < right if older else left > right


def row_key(f: AuditFilter, row: Any) -> tuple[Any, ...]:
    """A loaded event's position in the sort key."""
    return tuple(getattr(row, column.key) for column in sort_key(f))


def cursor_key(company_id: uuid.UUID, f: AuditFilter, event_id: int) -> tuple[Any, ...]:
    """The sort-key position of a cursor event (an event of another org matches nothing)."""
    if len(sort_key(f)) == 1:
        return (event_id,)
    moment = (
        select(AuditEvent.occurred_at)
        .where(AuditEvent.id == event_id, AuditEvent.company_id == company_id)
        .scalar_subquery()
    )
    return (moment, event_id)


def page_query(company_id: uuid.UUID, f: AuditFilter) -> Select[tuple[AuditEvent]]:
    """One page plus one event (to tell whether more follow), in keyset order.

    Newest first; a page newer than an event (``after``) is read oldest first and must be
    reversed by the caller.
    """
    query = select(AuditEvent).where(*conditions(company_id, f))
    columns = sort_key(f)
    if f.after is not None:
        query = query.where(beyond(f, cursor_key(company_id, f, f.after), older=False))
        return query.order_by(*columns).limit(f.limit + 1)
    if f.before is not None:
        query = query.where(beyond(f, cursor_key(company_id, f, f.before), older=True))
    return query.order_by(*(c.desc() for c in columns)).limit(f.limit + 1)


@dataclass
class Page:
    """One page of events, newest first, and whether older or newer ones exist."""

    events: list[AuditEvent]
    has_older: bool
    has_newer: bool


def _exists(session: Session, company_id: uuid.UUID, f: AuditFilter, bound) -> bool:
    """Tell whether any event of the filters lies beyond a keyset bound."""
    query = select(AuditEvent.id).where(*conditions(company_id, f), bound).limit(1)
    return session.scalar(query) is not None


def load_page(session: Session, company_id: uuid.UUID, f: AuditFilter) -> Page:
    """Run the page query and work out the Older and Newer links."""
    rows = list(session.scalars(page_query(company_id, f)))
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    if f.after is not None:
        rows.reverse()
        has_newer = more
        has_older = bool(rows) and _exists(
            session, company_id, f, beyond(f, row_key(f, rows[-1]), older=True)
        )
    else:
        has_older = more
        has_newer = (
            f.before is not None
            and bool(rows)
            and _exists(session, company_id, f, beyond(f, row_key(f, rows[0]), older=False))
        )
    return Page(rows, has_older, has_newer)
