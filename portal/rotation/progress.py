"""A run's progress as people and scripts read it, summed from a handful of rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.chat import kinds
from portal.db import utcnow
from portal.rotation.common import waiting_for
from portal.rotation.models import RotationRange, RotationRun
from portal.rotation.states import ACTIVE_RUN_STATES, RunState


@dataclass
class Progress:
    """A run's progress, read from a handful of rows (no table scans)."""

    run: RotationRun
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    bytes_done: int = 0
    now: datetime = field(default_factory=utcnow)

    @property
    def total(self) -> int:
        """Items planned."""
        return sum(k["total"] for k in self.kinds.values())

    @property
    def done(self) -> int:
        """Items moved or skipped as already moved."""
        return sum(k["done"] for k in self.kinds.values())

    @property
    def failed(self) -> int:
        """Items that could not be moved."""
        return sum(k["failed"] for k in self.kinds.values())

    @property
    def finished(self) -> bool:
        """Whether the run has ended (polling stops)."""
        return self.run.state not in ACTIVE_RUN_STATES

    @property
    def waiting_for(self) -> str | None:
        """The reason code while the run waits for a key service (key_service_unreachable,
        key_access_revoked), else None."""
        return None if self.finished else waiting_for(self.run.error)

    @property
    def labelled(self) -> list[tuple[str, str, dict[str, int]]]:
        """(name, label, figures) of each kind, in registry order, for pages to list."""
        return [(name, kinds.get(name).label, figures) for name, figures in self.kinds.items()]

    def percent(self, kind: str | None = None) -> int:
        """Per cent done, overall or for one kind."""
        k = (
            self.kinds[kind]
            if kind
            else {"total": self.total, "done": self.done, "failed": self.failed}
        )
        completed = self.run.state == RunState.COMPLETED
        if completed or not k["total"]:
            return 100 if completed or not k["total"] else 0
        return min(100, int(100 * (k["done"] + k["failed"]) / k["total"]))

    @property
    def elapsed(self) -> float:
        """Seconds the run has been going (to its end if finished)."""
        if self.run.started_at is None:
            return 0.0
        end = self.run.finished_at or self.now
        return max(0.001, (end - self.run.started_at).total_seconds())

    @property
    def items_per_second(self) -> float:
        """Average rate."""
        return (self.done + self.failed) / self.elapsed

    @property
    def mb_per_second(self) -> float:
        """Average ciphertext throughput."""
        return self.bytes_done / self.elapsed / 1e6

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate, while running."""
        left = self.total - self.done - self.failed
        rate = self.items_per_second
        running = self.run.state == RunState.RUNNING
        return left / rate if running and rate > 0 and left > 0 else None

    def as_json(self) -> dict[str, Any]:
        """Return the progress as plain JSON values (one object per kind, by its name)."""
        return {
            "id": str(self.run.id),
            "state": str(self.run.state),
            "kind": self.run.kind,
            **{k: dict(v) for k, v in self.kinds.items()},
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "percent": self.percent(),
            "items_per_second": round(self.items_per_second, 1),
            "mb_per_second": round(self.mb_per_second, 2),
            "eta_seconds": round(self.eta_seconds, 1) if self.eta_seconds else None,
            "waiting_for": self.waiting_for,
        }


def progress(session: Session, run: RotationRun) -> Progress:
    """Sum the run's ranges per kind: a few dozen rows, whatever the data volume."""
    return progress_of_runs(session, [run])[run.id]


def progress_of_runs(session: Session, runs: Sequence[RotationRun]) -> dict[uuid.UUID, Progress]:
    """The progress of several runs (a list page), by run id, from one grouped read of their
    ranges: the cost of a page of runs does not grow with one query per run."""
    results: dict[uuid.UUID, Progress] = {}
    for run in runs:
        result = results[run.id] = Progress(run)
        for kind in kinds.all_kinds():
            result.kinds[kind.name] = {"total": run.total_of(kind.name), "done": 0, "failed": 0}
    if not results:
        return results
    sums = session.execute(
        select(
            RotationRange.run_id,
            RotationRange.kind,
            func.sum(RotationRange.done),
            func.sum(RotationRange.failed),
            func.sum(RotationRange.bytes_done),
        )
        .where(RotationRange.run_id.in_(list(results)))
        .group_by(RotationRange.run_id, RotationRange.kind)
    ).all()
    for run_id, name, done, failed, nbytes in sums:
        result = results[run_id]
        if name in result.kinds:  # a kind no longer registered is no longer worked on
            result.kinds[name]["done"] = int(done or 0)
            result.kinds[name]["failed"] = int(failed or 0)
            result.bytes_done += int(nbytes or 0)
    return results


def settle_figures(session: Session, run: RotationRun) -> None:
    """Write the ranges' done and failed counts into the run's row for each kind."""
    for name, figures in progress(session, run).kinds.items():
        run.set_total(name, figures["total"])  # makes sure the kind's row exists
        row = next(r for r in run.per_kind if r.kind == name)
        row.done, row.failed = figures["done"], figures["failed"]
