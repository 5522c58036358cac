"""RQ jobs of the audit trail."""

from __future__ import annotations

import uuid

from jobs.context import fresh_engine, get_app
from portal.audit import aggregate


def flush_decrypt_failures(company_id: str, key_id: str, minute: str) -> int:
    """Write the follow-up event of a minute's failed decryptions."""
    app = get_app()
    fresh_engine(app)
    with app.app_context():
        from portal.db import get_session

        db = get_session()
        count = aggregate.flush(db, uuid.UUID(company_id), key_id, minute)
        db.commit()
        return count
