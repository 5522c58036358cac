"""Queueing a rotation run's work on RQ: jobs named by dotted path, carrying ids only.

portal never imports jobs: the job functions are enqueued by name, which is also what RQ
stores in Redis, so jobs queued before a deploy stay valid after it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from flask import Flask
from rq import Queue, Retry
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal.db import utcnow
from portal.redis_conn import connect, make_queue
from portal.rotation.models import RotationRange
from portal.rotation.states import RangeState

__all__ = [
    "enqueue_range_later",
    "enqueue_ranges",
    "job_session",
    "make_queue",
    "schedule_watchdog",
]

PROCESS_RANGE_JOB = "jobs.rotation.process_range"
WATCHDOG_JOB = "jobs.rotation.watchdog"


def job_session(app: Flask) -> Session:
    """A session of its own for a job (a job owns its transactions)."""
    return app.extensions["db_sessionmaker"]()


def app_queue(app: Flask) -> Queue:
    """The app's configured job queue on its Redis."""
    return make_queue(connect(app), app.config["RQ_QUEUE"])


def _take_pending(app: Flask, run_id: uuid.UUID, everything: bool) -> list[int]:
    """Mark the run's pending ranges not queued recently (or all) as queued now; their ids."""
    stale = timedelta(seconds=app.config["ROTATION_STALE_SECONDS"])
    with job_session(app) as db:
        now = utcnow()
        query = select(RotationRange.id).where(
            RotationRange.run_id == run_id, RotationRange.state == RangeState.PENDING
        )
        if not everything:
            query = query.where(
                RotationRange.enqueued_at.is_(None) | (RotationRange.enqueued_at < now - stale)
            )
        ids = list(db.scalars(query.order_by(RotationRange.kind, RotationRange.seq)))
        if ids:
            db.execute(
                update(RotationRange).where(RotationRange.id.in_(ids)).values(enqueued_at=now)
            )
        db.commit()
    return ids


def enqueue_ranges(
    app: Flask, run_id: uuid.UUID, everything: bool = False, at_front: bool = False
) -> int:
    """Queue a job for each pending range not queued recently (all of them if asked; ahead
    of other runs' slices if asked)."""
    ids = _take_pending(app, run_id, everything)
    queue = app_queue(app)
    for range_id in ids:
        queue.enqueue(
            PROCESS_RANGE_JOB, str(run_id), range_id, **_range_job(app, range_id, at_front)
        )
    schedule_watchdog(app, run_id)
    return len(ids)


def enqueue_range_later(app: Flask, run_id: uuid.UUID, range_id: int, delay: int) -> None:
    """Queue one range's job in ``delay`` seconds (it waits for its key service).

    The range was handed back marked as queued now, so the watchdog leaves it alone until
    it goes stale: if Redis loses this job, the watchdog queues the range again then.
    """
    app_queue(app).enqueue_in(
        timedelta(seconds=delay),
        PROCESS_RANGE_JOB,
        str(run_id),
        range_id,
        **_range_job(app, range_id),
    )
    schedule_watchdog(app, run_id)


def _range_job(app: Flask, range_id: int, at_front: bool = False) -> dict:
    """RQ options of a range's job."""
    return {
        "job_id": f"rotation-range-{range_id}-{uuid.uuid4().hex[:8]}",
        "at_front": at_front,
        "retry": Retry(max=3, interval=[1, 2, 5]),
        "job_timeout": max(300, 10 * app.config["ROTATION_SLICE_SECONDS"]),
        "result_ttl": 300,
        "failure_ttl": 86400,
    }


def schedule_watchdog(app: Flask, run_id: uuid.UUID) -> None:
    """Make sure the run's watchdog will look again soon."""
    app_queue(app).enqueue_in(
        timedelta(seconds=app.config["ROTATION_WATCHDOG_SECONDS"]),
        WATCHDOG_JOB,
        str(run_id),
        job_id=f"rotation-watchdog-{run_id}",
        result_ttl=60,
        failure_ttl=3600,
    )
