"""What every rotation module shares: the error, the run's history line and the limits."""

from __future__ import annotations

from sqlalchemy.orm import Session

from portal.keys.errors import KeyOperationError
from portal.rotation.models import RotationEvent, RotationRun

ITEMS_PER_RANGE = 25_000
BYTES_PER_RANGE = 64 * 1024 * 1024
MAX_RANGES = 32
MAX_PASSES = 3
# How many stored items of each kind the current key is tried on before a rotation starts.
DECRYPT_SAMPLE = 5
# rotation_runs.old_key_ids holds 400 characters: 23 hex key ids with their commas. Keys
# past that (never seen in practice) are picked up by verification once others empty.
MAX_SOURCE_KEYS = 400 // 17


class RotationError(KeyOperationError):
    """A rotation step was refused; the message says why."""


def log_event(session: Session, run: RotationRun, message: str) -> None:
    """Add a line to the run's own history (shown to support staff: steps, never people)."""
    session.add(RotationEvent(run_id=run.id, message=message))
