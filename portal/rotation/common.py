"""What every rotation module shares: the errors, the run's history line and the limits."""

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


# What a run's ``error`` reads while a key service it needs refuses or does not answer:
# "Waiting for the key service (<code>): <reason>". Cleared once the service answers.
WAITING = "Waiting for the key service ("
# Seconds a range waits before asking a refusing key service again (an unreachable one says).
WAIT_SECONDS = 5
MAX_WAIT_SECONDS = 30


class KeyServiceWait(Exception):
    """A key the run needs is in a key service that refused or did not answer: the range
    waits and resumes, its items are not failures (``code`` is in crypto.TEMPORARY_FAILURES).
    """

    def __init__(self, code: str, reason: str, retry_after: int = 0) -> None:
        """Keep the reason code, what the service said (never key material) and when to retry."""
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.retry_after = code, reason, retry_after

    @property
    def delay(self) -> int:
        """Seconds before the range is tried again."""
        return max(1, min(MAX_WAIT_SECONDS, self.retry_after or WAIT_SECONDS))

    @property
    def note(self) -> str:
        """The run's error and history line while it waits."""
        return f"{WAITING}{self.code}): {self.reason}; the run goes on once it answers"[:400]


def waiting_for(error: str | None) -> str | None:
    """The reason code a run is waiting for a key service with, from its ``error``, or None."""
    if not error or not error.startswith(WAITING):
        return None
    return error[len(WAITING) :].split(")", 1)[0]


def log_event(session: Session, run: RotationRun, message: str) -> None:
    """Add a line to the run's own history (shown to support staff: steps, never people)."""
    session.add(RotationEvent(run_id=run.id, message=message))
