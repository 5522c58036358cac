"""RQ entry points of the audit trail: plain ids in, the work in portal.audit."""

from __future__ import annotations

import uuid

from portal.audit import aggregate
from portal.audit.actions import Action
from portal.db import get_session
from portal.worker_app import job_app


def flush_decrypt_failures(
    company_id: str, key_id: str, minute: str, action: str = Action.DECRYPT_FAILED.value
) -> int:
    """Write the follow-up event of a minute's failed decryptions (or key service refusals)."""
    app = job_app()
    with app.app_context():
        db = get_session()
        count = aggregate.flush(db, uuid.UUID(company_id), key_id, minute, action)
        db.commit()
        return count
