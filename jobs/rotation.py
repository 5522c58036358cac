"""RQ entry points of a rotation run: plain ids in, the work in portal.rotation."""

from __future__ import annotations

import uuid

from portal.rotation import watchdog as watching
from portal.rotation import worker
from portal.worker_app import job_app


def process_range(run_id: str, range_id: int) -> str:
    """Re-encrypt one range of the run for up to a time slice."""
    app = job_app()
    with app.app_context():
        return worker.process_range(app, uuid.UUID(run_id), range_id)


def watchdog(run_id: str) -> str:
    """Re-queue the run's abandoned ranges and finish it once they are all done."""
    return watching.watchdog(job_app(), uuid.UUID(run_id))
