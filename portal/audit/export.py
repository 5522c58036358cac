"""Streaming exports of the Audit Log: CSV and JSON Lines, in constant memory."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Engine, select

from portal.audit.filters import AuditFilter, beyond, conditions, row_key, sort_key
from portal.audit.models import AuditEvent
from portal.events import iso_time

# Every stored field, chain fields included, so an export can be checked offline.
COLUMNS = (
    "id",
    "chain_id",
    "seq",
    "company_id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "category",
    "outcome",
    "source_ip",
    "user_agent",
    "details",
    "prev_hash",
    "hash",
)
CHUNK = 2000
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def stream(
    engine: Engine, company_id: uuid.UUID, f: AuditFilter, upto: int
) -> Iterator[dict[str, Any]]:
    """Yield the filtered events newest first, as the page lists them, in keyset chunks.

    ``upto`` is the id of the export's own event: nothing written after it is included.
    """
    columns = [getattr(AuditEvent, name) for name in COLUMNS]
    where = [*conditions(company_id, f), AuditEvent.id <= upto]
    order = [column.desc() for column in sort_key(f)]
    last: tuple[Any, ...] | None = None
    with engine.connect() as conn:
        while True:
            query = select(*columns).where(*where).order_by(*order).limit(CHUNK)
            if last is not None:
                query = query.where(beyond(f, last, older=True))
            rows = conn.execute(query).all()
            conn.rollback()  # no snapshot or lock held between chunks of a long download
            for row in rows:
                event = row._asdict()
                event["chain_id"] = str(event["chain_id"])
                event["company_id"] = str(event["company_id"]) if event["company_id"] else None
                event["occurred_at"] = iso_time(event["occurred_at"])
                yield event
            if len(rows) < CHUNK:
                return
            last = row_key(f, rows[-1])


def _cell(value: Any) -> Any:
    """Neutralise a text cell a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_rows(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Encode events as CSV text, a header line first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for event in events:
        writer.writerow([_cell(event[name]) for name in COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_rows(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Encode events as JSON Lines: one object per event, values exactly as stored."""
    lines: list[str] = []
    size = 0
    for event in events:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        lines.append(line)
        size += len(line)
        if size > 64 * 1024:
            yield "".join(lines)
            lines, size = [], 0
    yield "".join(lines)
