"""Keeping rotation runs moving when workers die or Redis forgets: the database decides.

The watchdog re-queues abandoned ranges and finishes runs whose ranges are all done; the
worker supervisor hands back at once the ranges of a worker process it saw die.
"""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta

from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.db import utcnow
from portal.events import emit
from portal.rotation.common import log_event
from portal.rotation.models import RotationEvent, RotationRange, RotationRun
from portal.rotation.progress import progress
from portal.rotation.queue import enqueue_ranges, job_session
from portal.rotation.states import RangeState, RunState
from portal.rotation.worker import finish_if_done

MILESTONES = (25, 50, 75)
# Runs the watchdog looks after: ranges may still be queued, or verification may be due.
WATCHED_STATES = (RunState.RUNNING, RunState.VERIFYING)


def watchdog(app: Flask, run_id: uuid.UUID) -> str:
    """Re-queue abandoned or late ranges and finish a run whose ranges are all done."""
    with app.app_context(), job_session(app) as db:
        run = db.get(RotationRun, run_id)
        if run is None or run.state not in WATCHED_STATES:
            return f"run is {run.state if run else 'gone'}"
        state = run.state
        release_stale_ranges(db, run_id, app.config["ROTATION_STALE_SECONDS"])
    with app.app_context():
        record_milestones(app, run_id)
    # A run left in verifying (its verifier died) is verified again; a running one only
    # once all of its ranges are done.
    finish_if_done(
        app, run_id, WATCHED_STATES if state == RunState.VERIFYING else (RunState.RUNNING,)
    )
    with job_session(app) as db:
        if db.get(RotationRun, run_id).state in WATCHED_STATES:
            enqueue_ranges(app, run_id)
    return "watching"


def record_milestones(app: Flask, run_id: uuid.UUID) -> None:
    """Note in the run's history and the audit log when it passes 25, 50 and 75 per cent."""
    with job_session(app) as db:
        # Two watchdog jobs of one run can get here at once. Whoever locks the run's row
        # first logs the milestones; the other waits, then finds them logged. A no-op UPDATE
        # is that lock on both engines: a row lock on PostgreSQL, the write lock on SQLite.
        db.execute(
            update(RotationRun)
            .where(RotationRun.id == run_id)
            .values(passes=RotationRun.passes)
            .execution_options(synchronize_session=False)
        )
        run = db.get(RotationRun, run_id)
        percent = progress(db, run).percent()
        logged = (
            db.scalar(
                select(func.count())
                .select_from(RotationEvent)
                .where(RotationEvent.run_id == run_id, RotationEvent.message.like("Progress: %"))
            )
            or 0
        )
        for milestone in [m for m in MILESTONES if percent >= m][logged:]:
            log_event(db, run, f"Progress: {milestone}% of items re-encrypted")
            emit(
                db,
                Action.ROTATION_PROGRESS,
                actor="system",
                company_id=run.company_id,
                details={"run_id": str(run_id), "percent": milestone},
            )
        db.commit()


def release_stale_ranges(db: Session, run_id: uuid.UUID, stale_seconds: int) -> int:
    """Hand back ranges whose worker has not reported for a while (it was killed)."""
    released = db.execute(
        update(RotationRange)
        .where(
            RotationRange.run_id == run_id,
            RotationRange.state == RangeState.RUNNING,
            RotationRange.heartbeat_at < utcnow() - timedelta(seconds=stale_seconds),
        )
        .values(state=RangeState.PENDING, worker=None, enqueued_at=None)
    ).rowcount
    db.commit()
    return released


def release_claims_of(app: Flask, worker_pid: int, job_pid: int | None = None) -> int:
    """Hand back at once the ranges a dead worker process (or one dead job process of it) held
    on this host, and queue them first: the watchdog would wait for them to go stale."""
    prefix = f"{socket.gethostname()}:{worker_pid}:" + (f"{job_pid}:" if job_pid else "")
    held = (RotationRange.state == RangeState.RUNNING) & RotationRange.worker.startswith(
        prefix, autoescape=True
    )
    with job_session(app) as db:
        runs = list(db.scalars(select(RotationRange.run_id).where(held).distinct()))
        released = db.execute(
            update(RotationRange)
            .where(held)
            .values(state=RangeState.PENDING, worker=None, enqueued_at=None)
        ).rowcount
        running = list(
            db.scalars(
                select(RotationRun.id).where(
                    RotationRun.id.in_(runs), RotationRun.state == RunState.RUNNING
                )
            )
        )
        db.commit()
    for run_id in running:
        enqueue_ranges(app, run_id, at_front=True)
    return released


def _watched_runs(app: Flask) -> list[uuid.UUID]:
    """Every unfinished run's id."""
    with job_session(app) as db:
        return list(db.scalars(select(RotationRun.id).where(RotationRun.state.in_(WATCHED_STATES))))


def watch_active_runs(app: Flask) -> list[str]:
    """One watchdog pass over every unfinished run (the worker supervisor calls this)."""
    runs = _watched_runs(app)
    for run_id in runs:
        watchdog(app, run_id)
    return [str(r) for r in runs]


def resume_active_runs(app: Flask) -> list[str]:
    """Rebuild the queue from the database for every unfinished run (e.g. after Redis lost it)."""
    runs = _watched_runs(app)
    for run_id in runs:
        with job_session(app) as db:
            release_stale_ranges(db, run_id, app.config["ROTATION_STALE_SECONDS"])
        enqueue_ranges(app, run_id, everything=True)
    return [str(r) for r in runs]
