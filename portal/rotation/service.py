"""Temporary: the old import path of the rotation modules, until every importer moves.

Import from portal.rotation.start / controls / sources / verify / progress / common instead.
"""

from portal.rotation.common import RotationError
from portal.rotation.controls import (
    CONTROL_STATES,
    can_resume,
    control,
    failure_count,
    resume_refusal,
    retry_failed,
    set_throttle,
)
from portal.rotation.progress import Progress, progress
from portal.rotation.sources import Sources, check_keys, count_items, keyring_for_run, sources
from portal.rotation.start import (
    plan_ranges,
    start_encrypt_existing,
    start_move_to_active,
    start_rotation,
)
from portal.rotation.verify import verify_and_finish

__all__ = [
    "CONTROL_STATES",
    "Progress",
    "RotationError",
    "Sources",
    "can_resume",
    "check_keys",
    "control",
    "count_items",
    "failure_count",
    "keyring_for_run",
    "plan_ranges",
    "progress",
    "resume_refusal",
    "retry_failed",
    "set_throttle",
    "sources",
    "start_encrypt_existing",
    "start_move_to_active",
    "start_rotation",
    "verify_and_finish",
]
