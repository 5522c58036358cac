"""Whether a re-encryption run blocks key operations (kept apart to avoid import cycles)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.rotation.models import ACTIVE_RUN_STATES, RotationRun


def run_in_progress(session: Session, company_id: uuid.UUID) -> RotationRun | None:
    """Return the organisation's unfinished rotation or re-encryption run, if any."""
    return session.scalar(
        select(RotationRun).where(
            RotationRun.company_id == company_id, RotationRun.state.in_(ACTIVE_RUN_STATES)
        )
    )
