"""Rotation runs, their units of work (ranges with checkpoints) and per-item failures."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import Base, UTCDateTime, new_id, utcnow
from portal.rotation.states import ACTIVE_RUN_STATES as ACTIVE_RUN_STATES  # re-exported
from portal.rotation.states import RangeState, RunState, sql_values

RUN_STATES = sql_values(RunState)
RUN_KINDS = ("rotation", "encrypt_existing")
RANGE_STATES = sql_values(RangeState)


class RotationRun(Base):
    """One re-encryption run of one organisation; the database is its source of truth."""

    __tablename__ = "rotation_runs"
    __table_args__ = (
        CheckConstraint(f"state IN {RUN_STATES}", name="ck_rotation_runs_state"),
        CheckConstraint(f"kind IN {RUN_KINDS}", name="ck_rotation_runs_kind"),
        Index("ix_rotation_runs_company_created", "company_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(20), default="rotation")
    # Hex key ids: the keys items are moved from (comma-separated) and the key they move to.
    old_key_ids: Mapped[str] = mapped_column(String(400))
    new_key_id: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(20), default=RunState.QUEUED.value)
    max_batches_per_second: Mapped[float | None] = mapped_column(Float)
    # How many verification passes found items left and sent the run round again.
    passes: Mapped[int] = mapped_column(Integer, default=0)
    started_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    # Planned item counts, one row per kind of encrypted data (see RotationRunKind).
    per_kind: Mapped[list[RotationRunKind]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    def total_of(self, kind: str) -> int:
        """Items of one kind the run planned to move (0 for a kind it has no row for)."""
        return next((row.total for row in self.per_kind if row.kind == kind), 0)

    def set_total(self, kind: str, total: int) -> None:
        """Set how many items of one kind the run plans to move."""
        for row in self.per_kind:
            if row.kind == kind:
                row.total = total
                return
        self.per_kind.append(RotationRunKind(kind=kind, total=total, done=0, failed=0))

    @property
    def total(self) -> int:
        """All items the run planned to move, every kind together."""
        return sum(row.total for row in self.per_kind)


class RotationRunKind(Base):
    """A run's figures for one kind of encrypted data (a row per kind, not a column).

    ``total`` is what the run plans to move. ``done`` and ``failed`` are settled from the
    ranges when the run ends (completed, failed or cancelled); while it goes, progress sums
    the ranges.
    """

    __tablename__ = "rotation_run_kinds"

    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("rotation_runs.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)


class RotationRange(Base):
    """A unit of work: one kind of item within a primary-key range, with its checkpoint."""

    __tablename__ = "rotation_ranges"
    __table_args__ = (
        CheckConstraint(f"state IN {RANGE_STATES}", name="ck_rotation_ranges_state"),
        Index("ix_rotation_ranges_run", "run_id", "kind", "seq"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("rotation_runs.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(20))
    seq: Mapped[int] = mapped_column(Integer)
    # Inclusive lower and exclusive upper bound of ids (None: unbounded).
    lo: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    hi: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Checkpoint: the last id that was processed; work resumes after it.
    cursor: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    state: Mapped[str] = mapped_column(String(20), default=RangeState.PENDING.value)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When a job for this range was last put on the queue (the watchdog re-enqueues late ones).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class RotationFailure(Base):
    """An item a run could not re-encrypt: left untouched, listed for the admin."""

    __tablename__ = "rotation_failures"
    __table_args__ = (Index("ix_rotation_failures_run_item", "run_id", "item_id", unique=True),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("rotation_runs.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(20))
    item_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RotationEvent(Base):
    """The run's own history (state changes, milestones) shown on its progress page."""

    __tablename__ = "rotation_events"
    __table_args__ = (Index("ix_rotation_events_run", "run_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("rotation_runs.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    message: Mapped[str] = mapped_column(String(400))
