"""The states of rotation runs and of their ranges, as stored in the database."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """Where a rotation run is; stored as its value in rotation_runs.state."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RangeState(StrEnum):
    """Where one range of a run is; stored as its value in rotation_ranges.state."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


# A run in one of these states blocks another run of the same organisation.
ACTIVE_RUN_STATES: tuple[RunState, ...] = (
    RunState.QUEUED,
    RunState.RUNNING,
    RunState.PAUSED,
    RunState.VERIFYING,
)


def sql_values(states: type[StrEnum]) -> tuple[str, ...]:
    """The plain values of an enum, in order (for CHECK constraints written as SQL)."""
    return tuple(s.value for s in states)
