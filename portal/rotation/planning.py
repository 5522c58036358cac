"""Splitting a run's work into ranges of row ids that workers take in parallel.

Row ids are time-ordered (UUIDv7, ``portal.db.new_id``), so consecutive ids sit on
neighbouring pages of the table and of its id indexes. A range is a run of consecutive ids of
one organisation holding about the same number of items as the others: two workers rewriting
two ranges touch different pages and never wait for each other. The bounds are read from the
ids themselves in one ordered pass over the organisation's (company_id, id) index, whatever
mix of older random (version 4) and time-ordered ids the table holds.
"""

from __future__ import annotations

import uuid

from flask import current_app, has_app_context
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.chat import counts, kinds
from portal.rotation.common import BYTES_PER_RANGE, ITEMS_PER_RANGE, MAX_RANGES
from portal.rotation.models import RotationRange, RotationRun

# A range holds at least this many items when a small run is split for parallel workers
# (ROTATION_MIN_RANGES): below that a range costs more than it saves.
MIN_RANGE_ITEMS = 2_000


def parts_for(items: int, nbytes: int = 0, min_ranges: int = 1) -> int:
    """How many ranges a kind's work is split into: bounded by items, by bytes and in number."""
    parts = -(-items // ITEMS_PER_RANGE)
    parts = max(parts, min(min_ranges, items // MIN_RANGE_ITEMS))
    parts = max(parts, -(-nbytes // BYTES_PER_RANGE))
    return max(1, min(MAX_RANGES, parts))


def bounds(session: Session, kind: kinds.Kind, company_id: uuid.UUID, parts: int) -> list:
    """``parts - 1`` ids splitting the organisation's rows of a kind into equal runs."""
    if parts <= 1:
        return []
    model = kind.model
    held = counts.item_counts(session, company_id).values()
    rows = sum(per_kind.get(kind.name, 0) for per_kind in held)
    # The first row of each range but the first, spread evenly over the rows.
    starts = sorted({rows * i // parts + 1 for i in range(1, parts)} - {1})
    if not starts:
        return []
    numbered = (
        select(model.id.label("id"), func.row_number().over(order_by=model.id).label("n"))
        .where(model.company_id == company_id)
        .subquery()
    )
    return list(
        session.scalars(
            select(numbered.c.id).where(numbered.c.n.in_(starts)).order_by(numbered.c.id)
        )
    )


def _bytes_of(session: Session, kind: kinds.Kind, run: RotationRun) -> int:
    """Bytes of a sized kind the run will move (such a kind is split by size too)."""
    model = kind.model
    total = session.scalar(
        select(func.coalesce(func.sum(getattr(model, kind.size_column)), 0)).where(
            model.company_id == run.company_id,
            model.key_id.in_(run.old_key_ids.split(",")),
        )
    )
    return int(total or 0)  # PostgreSQL's SUM of bigint is a numeric (Decimal)


def plan_ranges(session: Session, run: RotationRun) -> None:
    """Split each kind's work into id ranges that workers can take in parallel."""
    min_ranges = current_app.config["ROTATION_MIN_RANGES"] if has_app_context() else 1
    for kind in kinds.all_kinds():
        items = run.total_of(kind.name)
        nbytes = _bytes_of(session, kind, run) if kind.size_column and items else 0
        cuts = bounds(session, kind, run.company_id, parts_for(items, nbytes, min_ranges))
        edges = [None, *cuts, None]
        for seq in range(len(edges) - 1):
            session.add(
                RotationRange(
                    run_id=run.id, kind=kind.name, seq=seq, lo=edges[seq], hi=edges[seq + 1]
                )
            )
    session.flush()
