"""Items per organisation, key and kind, kept up to date in the transaction of each write.

The compliance page, ``key status``, a run's totals and the retirement check read these
counters instead of counting the data, so they cost the same at ten items and at ten million.

Every change of a kind's rows is counted where it happens, inside its own transaction:

- rows added, deleted or moved to another key through the ORM are seen by a flush listener
  (``_collect``), and rows of an ORM bulk ``insert(Model)`` by an execute listener
  (``_collect_bulk``): the write paths need nothing more;
- Core deletes (``chat.service``) report the rows they deleted (``note_removed``, fed by
  ``DELETE ... RETURNING``), and a rotation batch reports what its compare-and-swap moved
  (``apply`` on its connection).

The session's deltas are written just before it commits (nothing is written on a rollback),
as one upsert per organisation, key and kind, in a fixed order, into one of ``SHARDS`` rows
picked at random: concurrent writers of one organisation rarely wait for the same row, and
two transactions always lock counter rows in the same order, after their data rows, so they
cannot deadlock on them. A read sums the shards.

``early`` counts the items that were written under a platform key before the organisation's
first own key (the compliance page's "written before BYOK"). Whether a row is early depends
on its key and that key's organisation, which portal.keys knows: it registers the
``early_cutoffs`` function (``set_cutoffs``). ``recount`` rebuilds an organisation's counters
from the data itself (after a bulk load, or to check them).
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Uuid, bindparam, delete, event, func, select, text
from sqlalchemy.orm import ORMExecuteState, Session, attributes

from portal.chat import kinds
from portal.chat.models import KeyItemCount

SHARDS = 8
_INFO = "byok_item_deltas"
# key id -> the creation time before which its rows are "early" (absent: never early).
Cutoffs = dict[str, datetime]
_cutoffs: Callable[[Connection, uuid.UUID], Cutoffs] | None = None


def set_cutoffs(fn: Callable[[Connection, uuid.UUID], Cutoffs]) -> None:
    """Register how to tell early rows (portal.keys does, from the organisation's keys)."""
    global _cutoffs
    _cutoffs = fn


@dataclass
class Delta:
    """Rows added to (+) and removed from (-) one key's count of one kind."""

    items: int = 0
    times: list[tuple[int, datetime]] = field(default_factory=list)  # (+1 | -1, created_at)
    early: int | None = None  # already known (a recount), instead of judged from ``times``


Deltas = dict[tuple[uuid.UUID, str, str], Delta]  # (company_id, key_id, kind) -> change


def _deltas(session: Session) -> Deltas:
    """The session's pending deltas (kept in ``session.info`` until commit or rollback)."""
    return session.info.setdefault(_INFO, defaultdict(Delta))


def add(deltas: Deltas, company_id: uuid.UUID, key_id: str, kind: str, sign: int, at: Any):
    """Count one row added (sign +1) to or removed (-1) from a key."""
    delta = deltas[(company_id, key_id, kind)]
    delta.items += sign
    delta.times.append((sign, aware(at)))


def note_removed(session: Session, kind: str, company_id: uuid.UUID, rows: Iterable) -> None:
    """Count rows a Core statement deleted: ``(key_id, created_at)`` of each."""
    deltas = _deltas(session)
    for key_id, created_at in rows:
        add(deltas, company_id, key_id, kind, -1, created_at)


def note_moved(
    session: Session, kind: str, company_id: uuid.UUID, old: str, new: str, at: datetime
) -> None:
    """Count one row a Core statement moved from key ``old`` to key ``new``."""
    deltas = _deltas(session)
    add(deltas, company_id, old, kind, -1, at)
    add(deltas, company_id, new, kind, +1, at)


def aware(moment: Any) -> datetime:
    """A stored creation time as an aware UTC datetime (SQLite's raw rows hold text)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment is None:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@event.listens_for(Session, "after_flush")
def _collect(session: Session, _context: Any) -> None:
    """Count the kinds' rows this flush inserted, deleted or moved to another key."""
    if not (session.new or session.deleted or session.dirty):
        return
    by_model = {kind.model: kind.name for kind in kinds.all_kinds()}
    deltas = None
    for obj in session.new:
        name = by_model.get(type(obj))
        if name is not None:
            deltas = deltas or _deltas(session)
            add(deltas, obj.company_id, obj.key_id, name, +1, obj.created_at)
    for obj in session.deleted:
        name = by_model.get(type(obj))
        if name is not None:
            deltas = deltas or _deltas(session)
            old = attributes.get_history(obj, "key_id").deleted
            add(deltas, obj.company_id, old[0] if old else obj.key_id, name, -1, obj.created_at)
    for obj in session.dirty:
        name = by_model.get(type(obj))
        if name is None:
            continue
        history = attributes.get_history(obj, "key_id")
        if history.deleted and history.added and history.deleted[0] != history.added[0]:
            deltas = deltas or _deltas(session)
            add(deltas, obj.company_id, history.deleted[0], name, -1, obj.created_at)
            add(deltas, obj.company_id, history.added[0], name, +1, obj.created_at)


@event.listens_for(Session, "do_orm_execute")
def _collect_bulk(state: ORMExecuteState) -> None:
    """Count the rows of an ORM bulk ``insert(Model)`` of a kind (it bypasses the flush)."""
    mapper = state.bind_mapper
    if not state.is_insert or mapper is None:
        return
    try:
        kind = kinds.of(mapper.class_)
    except KeyError:  # not an encrypted kind: nothing to count
        return
    rows = state.parameters if isinstance(state.parameters, list) else [state.parameters or {}]
    deltas, now = _deltas(state.session), datetime.now(UTC)
    for row in rows:
        add(deltas, row["company_id"], row["key_id"], kind.name, +1, row.get("created_at") or now)


@event.listens_for(Session, "before_commit")
def _write(session: Session) -> None:
    """Write the transaction's deltas, after its last flush, just before it commits."""
    if session.new or session.dirty or session.deleted:
        session.flush()  # commit would flush after this hook: count that flush's rows too
    if not session.info.get(_INFO):
        return
    deltas = session.info.pop(_INFO, None)
    if deltas:
        apply(session.connection(), deltas)


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, _previous: Any) -> None:
    """A rolled-back transaction changed nothing: drop its deltas."""
    session.info.pop(_INFO, None)


def cutoffs(conn: Connection, company_id: uuid.UUID) -> Cutoffs:
    """Per platform key of the organisation, the time before which its items are early."""
    return _cutoffs(conn, company_id) if _cutoffs else {}


# One statement for both engines (SQLite has PostgreSQL's upsert syntax), built once: on
# the write path of every data-API request, building it per call costs more than running it.
UPSERT = text(
    "INSERT INTO key_item_counts (company_id, key_id, kind, shard, items, early) "
    "VALUES (:company_id, :key_id, :kind, :shard, :items, :early) "
    "ON CONFLICT (company_id, key_id, kind, shard) DO UPDATE SET "
    "items = key_item_counts.items + excluded.items, "
    "early = key_item_counts.early + excluded.early"
).bindparams(bindparam("company_id", type_=Uuid()))


def apply(conn: Connection, deltas: Deltas) -> None:
    """Add the deltas to the counters, in a fixed order, into one random shard."""
    shard = random.randrange(SHARDS)  # noqa: S311 - spreading writers, not a secret
    known: dict[uuid.UUID, Cutoffs] = {}
    rows = []
    for (company_id, key_id, kind), delta in sorted(deltas.items(), key=lambda kv: _order(kv[0])):
        early = delta.early
        if early is None:
            if company_id not in known:
                known[company_id] = cutoffs(conn, company_id)
            cutoff = known[company_id].get(key_id)
            early = sum(sign for sign, at in delta.times if cutoff is not None and at < cutoff)
        if delta.items or early:
            rows.append(
                {
                    "company_id": company_id,
                    "key_id": key_id,
                    "kind": kind,
                    "shard": shard,
                    "items": delta.items,
                    "early": early,
                }
            )
    for row in rows:  # one at a time, in order: the lock order that keeps writers deadlock-free
        conn.execute(UPSERT, row)


def apply_moved(
    conn: Connection, kind: str, company_id: uuid.UUID, new_key: str, rows: list[tuple]
) -> None:
    """Count rows a rotation batch moved to ``new_key``: ``(id, old key id, created_at, ...)``
    each. Their creation times are looked at only where a platform key is involved."""
    found = cutoffs(conn, company_id)
    by_key: dict[str, list[tuple]] = {}
    for row in rows:
        by_key.setdefault(row[1], []).append(row)
    deltas: Deltas = {}
    for old, group in by_key.items():
        deltas[(company_id, old, kind)] = Delta(-len(group), early=-_early(group, found.get(old)))
        gained = deltas.setdefault((company_id, new_key, kind), Delta(early=0))
        gained.items += len(group)
        gained.early += _early(group, found.get(new_key))
    apply(conn, deltas)


def _early(rows: list[tuple], cutoff: datetime | None) -> int:
    """How many of the rows were written before the cutoff (none without one)."""
    if cutoff is None:
        return 0
    return sum(1 for row in rows if aware(row[2]) < cutoff)


def _order(key: tuple[uuid.UUID, str, str]) -> tuple[str, str, str]:
    """The one order every transaction locks counter rows in."""
    return (str(key[0]), key[1], key[2])


def item_counts(session: Session | Connection, company_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """Items per key id and kind (every registered kind present, zero where none)."""
    names = [kind.name for kind in kinds.all_kinds()]
    out: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(KeyItemCount.key_id, KeyItemCount.kind, func.sum(KeyItemCount.items))
        .where(KeyItemCount.company_id == company_id)
        .group_by(KeyItemCount.key_id, KeyItemCount.kind)
    )
    for key_id, kind, n in rows:
        if n and kind in names:
            out.setdefault(key_id, dict.fromkeys(names, 0))[kind] = int(n)
    return out


def early_items(session: Session | Connection, company_id: uuid.UUID) -> int:
    """Items written under a platform key before the organisation's first own key."""
    total = session.scalar(
        select(func.coalesce(func.sum(KeyItemCount.early), 0)).where(
            KeyItemCount.company_id == company_id
        )
    )
    return int(total or 0)


def recount(conn: Session | Connection, company_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """Rebuild an organisation's counters by counting its data (one scan per kind)."""
    if isinstance(conn, Session):
        conn = conn.connection()
    conn.execute(delete(KeyItemCount).where(KeyItemCount.company_id == company_id))
    found = cutoffs(conn, company_id)
    deltas: Deltas = {}
    for kind in kinds.all_kinds():
        model = kind.model
        rows = conn.execute(
            select(model.key_id, func.count())
            .where(model.company_id == company_id)
            .group_by(model.key_id)
        )
        for key_id, n in rows:
            deltas[(company_id, key_id, kind.name)] = Delta(items=int(n))
        for key_id, cutoff in found.items():
            early = conn.scalar(
                select(func.count()).where(
                    model.company_id == company_id,
                    model.key_id == key_id,
                    model.created_at < cutoff,
                )
            )
            if early:
                deltas.setdefault((company_id, key_id, kind.name), Delta()).early = int(early)
    apply(conn, deltas)
    return item_counts(conn, company_id)
