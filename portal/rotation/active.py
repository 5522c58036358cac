"""The organisation's unfinished rotation run, as portal.keys asks for it (wired in create_app)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.rotation.models import RotationRun
from portal.rotation.states import ACTIVE_RUN_STATES


def active_run(session: Session, company_id: uuid.UUID) -> RotationRun | None:
    """Return the organisation's unfinished rotation or re-encryption run, if any."""
    return session.scalar(
        select(RotationRun).where(
            RotationRun.company_id == company_id, RotationRun.state.in_(ACTIVE_RUN_STATES)
        )
    )
