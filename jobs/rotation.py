"""RQ jobs of a rotation run. They take a run id and a range id, never key material."""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import timedelta

from flask import Flask
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from jobs.context import fresh_engine, get_app
from portal.audit import aggregate
from portal.db import scrub_rewritten, utcnow
from portal.rotation import engine, service
from portal.rotation.models import RotationRange, RotationRun

# The pid of the RQ worker process whose job processes (work-horses) run these jobs, set
# before it forks them: claims name it, so its supervisor can release them if it dies.
_worker_pid: int | None = None


def set_worker_process(pid: int) -> None:
    """Name the worker process that this process's jobs will run under."""
    global _worker_pid
    _worker_pid = pid


def _claim_label() -> str:
    """host:WORKER:JOB:nonce, the worker process and the job process (the same without fork)."""
    job = os.getpid()
    return f"{socket.gethostname()}:{_worker_pid or job}:{job}:{uuid.uuid4().hex[:6]}"


def _session(app: Flask) -> Session:
    """A session of its own for a job (a job owns its transactions)."""
    return app.extensions["db_sessionmaker"]()


def process_range(run_id: str, range_id: int) -> str:
    """Re-encrypt one range in batches for up to a time slice, checkpointing each batch."""
    app = get_app()
    fresh_engine(app)
    with app.app_context():
        return _process(app, uuid.UUID(run_id), range_id)


def _claim(db: Session, run_id: uuid.UUID, range_id: int, me: str, stale: int) -> bool:
    """Take the range unless another live worker holds it or it is done."""
    now = utcnow()
    taken = db.execute(
        update(RotationRange)
        .where(
            RotationRange.id == range_id,
            RotationRange.run_id == run_id,
            (RotationRange.state == "pending")
            | (
                (RotationRange.state == "running")
                & (
                    (RotationRange.heartbeat_at.is_(None))
                    | (RotationRange.heartbeat_at < now - timedelta(seconds=stale))
                )
            ),
        )
        .values(state="running", worker=me, heartbeat_at=now, attempts=RotationRange.attempts + 1)
    ).rowcount
    db.commit()
    return bool(taken)


def _release(db: Session, range_id: int, me: str, state: str = "pending") -> None:
    """Hand the range back (or mark it done) if this worker still holds it."""
    db.execute(
        update(RotationRange)
        .where(RotationRange.id == range_id, RotationRange.worker == me)
        .values(state=state, worker=None, enqueued_at=None, heartbeat_at=utcnow())
    )
    db.commit()


def _process(app: Flask, run_id: uuid.UUID, range_id: int) -> str:
    """The batch loop of one range."""
    cfg = app.config
    me = _claim_label()
    with _session(app) as db:
        if not _claim(db, run_id, range_id, me, cfg["ROTATION_STALE_SECONDS"]):
            return "not claimed"
        run = db.get(RotationRun, run_id)
        rng = db.get(RotationRange, range_id)
        kind = engine.KINDS[rng.kind]
        old = run.old_key_ids.split(",")
        try:
            ring = service.keyring_for_run(db, run)
        except service.RotationError as exc:
            _release(db, range_id, me)
            return f"waiting: {exc}"
        cursor, lo, hi, company = rng.cursor, rng.lo, rng.hi, run.company_id
        deadline = time.monotonic() + cfg["ROTATION_SLICE_SECONDS"]
        last_batch = 0.0
        while True:
            state, throttle = db.execute(
                select(RotationRun.state, RotationRun.max_batches_per_second).where(
                    RotationRun.id == run_id
                )
            ).one()
            # End the read before any wait: a sleep inside a transaction keeps the backend
            # `idle in transaction`, and a connection dropped meanwhile would cost the range.
            db.commit()
            if state != "running":
                _release(db, range_id, me)
                return f"stopped: run is {state}"
            if throttle:
                wait = last_batch + 1.0 / throttle - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                    continue  # look at the run again: it may have been paused meanwhile
            last_batch = time.monotonic()
            result = engine.run_batch(
                db.connection(),
                run_id,
                kind,
                company,
                old,
                run.new_key_id,
                ring,
                cursor,
                lo,
                hi,
                cfg["ROTATION_BATCH_ROWS"],
                cfg["ROTATION_BATCH_BYTES"],
            )
            if result.last_id is None:
                db.rollback()
                _release(db, range_id, me, state="done")
                _maybe_finish(app, run_id)
                return "done"
            if result.failed:
                aggregate.record(
                    db,
                    company,
                    ",".join(old),
                    kind.name,
                    [f"{i}:{r}" for i, r in result.failed],
                    "system",
                )
            kept = db.execute(
                update(RotationRange)
                .where(RotationRange.id == range_id, RotationRange.worker == me)
                .values(
                    cursor=result.last_id,
                    heartbeat_at=utcnow(),
                    done=RotationRange.done + result.rewritten + result.skipped,
                    failed=RotationRange.failed + len(result.failed),
                    bytes_done=RotationRange.bytes_done + result.bytes,
                )
            ).rowcount
            if not kept:  # another worker took the range over: leave it all to them
                db.rollback()
                return "lost claim"
            db.commit()
            cursor = result.last_id
            if time.monotonic() > deadline:
                _release(db, range_id, me)
                enqueue_ranges(app, run_id)
                return "sliced"


def _maybe_finish(
    app: Flask, run_id: uuid.UUID, from_states: tuple[str, ...] = ("running",)
) -> None:
    """When every range is done, verify the run and complete it (or send it round again)."""
    with _session(app) as db:
        pending = exists().where(RotationRange.run_id == run_id, RotationRange.state != "done")
        moved = db.execute(
            update(RotationRun)
            .where(RotationRun.id == run_id, RotationRun.state.in_(from_states), ~pending)
            .values(state="verifying")
        ).rowcount
        db.commit()
        if not moved:
            return
        run = db.get(RotationRun, run_id)
        outcome = service.verify_and_finish(db, run)
        db.commit()
        rewritten = [k.table for k in engine.KINDS.values() if getattr(run, f"{k.name}_total")]
    if outcome == "running":
        enqueue_ranges(app, run_id)
    elif outcome == "completed":
        # After the completion commit: old ciphertext must not linger in the database files.
        scrub_rewritten(app.extensions["db_engine"], rewritten)


def enqueue_ranges(
    app: Flask, run_id: uuid.UUID, everything: bool = False, at_front: bool = False
) -> int:
    """Queue a job for each pending range not queued recently (all of them if asked; ahead
    of other runs' slices if asked)."""
    from rq import Retry

    from portal.redis_conn import connect
    from portal.serving import make_queue

    stale = timedelta(seconds=app.config["ROTATION_STALE_SECONDS"])
    with _session(app) as db:
        now = utcnow()
        query = select(RotationRange.id).where(
            RotationRange.run_id == run_id, RotationRange.state == "pending"
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
    queue = make_queue(connect(app), app.config["RQ_QUEUE"])
    for range_id in ids:
        queue.enqueue(
            process_range,
            str(run_id),
            range_id,
            job_id=f"rotation-range-{range_id}-{uuid.uuid4().hex[:8]}",
            at_front=at_front,
            retry=Retry(max=3, interval=[1, 2, 5]),
            job_timeout=max(300, 10 * app.config["ROTATION_SLICE_SECONDS"]),
            result_ttl=300,
            failure_ttl=86400,
        )
    schedule_watchdog(app, run_id)
    return len(ids)


def schedule_watchdog(app: Flask, run_id: uuid.UUID) -> None:
    """Make sure the run's watchdog will look again soon."""
    from portal.redis_conn import connect
    from portal.serving import make_queue

    queue = make_queue(connect(app), app.config["RQ_QUEUE"])
    queue.enqueue_in(
        timedelta(seconds=app.config["ROTATION_WATCHDOG_SECONDS"]),
        watchdog,
        str(run_id),
        job_id=f"rotation-watchdog-{run_id}",
        result_ttl=60,
        failure_ttl=3600,
    )


def watchdog(run_id: str) -> str:
    """Re-queue abandoned or late ranges and finish a run whose ranges are all done."""
    app = get_app()
    fresh_engine(app)
    rid = uuid.UUID(run_id)
    with app.app_context(), _session(app) as db:
        run = db.get(RotationRun, rid)
        if run is None or run.state not in ("running", "verifying"):
            return f"run is {run.state if run else 'gone'}"
        state = run.state
        release_stale_ranges(db, rid, app.config["ROTATION_STALE_SECONDS"])
    with app.app_context():
        _record_milestone(app, rid)
    _maybe_finish(
        app, rid, from_states=("running", "verifying") if state == "verifying" else ("running",)
    )
    with _session(app) as db:
        if db.get(RotationRun, rid).state in ("running", "verifying"):
            enqueue_ranges(app, rid)
    return "watching"


MILESTONES = (25, 50, 75)


def _record_milestone(app: Flask, run_id: uuid.UUID) -> None:
    """Note in the run's history and the audit log when it passes 25, 50 and 75 per cent."""
    from portal.events import emit
    from portal.rotation.models import RotationEvent

    with _session(app) as db:
        run = db.get(RotationRun, run_id)
        percent = service.progress(db, run).percent()
        logged = (
            db.scalar(
                select(func.count())
                .select_from(RotationEvent)
                .where(RotationEvent.run_id == run_id, RotationEvent.message.like("Progress: %"))
            )
            or 0
        )
        for milestone in [m for m in MILESTONES if percent >= m][logged:]:
            service.log_event(db, run, f"Progress: {milestone}% of items re-encrypted")
            emit(
                db,
                "BYOK.rotation_progress",
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
            RotationRange.state == "running",
            RotationRange.heartbeat_at < utcnow() - timedelta(seconds=stale_seconds),
        )
        .values(state="pending", worker=None, enqueued_at=None)
    ).rowcount
    db.commit()
    return released


def release_claims_of(app: Flask, worker_pid: int, job_pid: int | None = None) -> int:
    """Hand back at once the ranges a dead worker process (or one dead job process of it) held
    on this host, and queue them first: the watchdog would wait for them to go stale."""
    prefix = f"{socket.gethostname()}:{worker_pid}:" + (f"{job_pid}:" if job_pid else "")
    held = RotationRange.worker.startswith(prefix, autoescape=True)
    with _session(app) as db:
        runs = list(
            db.scalars(
                select(RotationRange.run_id)
                .where(RotationRange.state == "running", held)
                .distinct()
            )
        )
        released = db.execute(
            update(RotationRange)
            .where(RotationRange.state == "running", held)
            .values(state="pending", worker=None, enqueued_at=None)
        ).rowcount
        running = list(
            db.scalars(
                select(RotationRun.id).where(
                    RotationRun.id.in_(runs), RotationRun.state == "running"
                )
            )
        )
        db.commit()
    for run_id in running:
        enqueue_ranges(app, run_id, at_front=True)
    return released


def watch_active_runs(app: Flask) -> list[str]:
    """One watchdog pass over every unfinished run (the worker supervisor calls this)."""
    with _session(app) as db:
        runs = list(
            db.scalars(
                select(RotationRun.id).where(RotationRun.state.in_(("running", "verifying")))
            )
        )
    for run_id in runs:
        watchdog(str(run_id))
    return [str(r) for r in runs]


def resume_active_runs(app: Flask | None = None) -> list[str]:
    """Rebuild the queue from the database for every unfinished run (e.g. after Redis lost it)."""
    app = app or get_app()
    with _session(app) as db:
        runs = list(
            db.scalars(
                select(RotationRun.id).where(RotationRun.state.in_(("running", "verifying")))
            )
        )
    for run_id in runs:
        with _session(app) as db:
            release_stale_ranges(db, run_id, app.config["ROTATION_STALE_SECONDS"])
        enqueue_ranges(app, run_id, everything=True)
    return [str(r) for r in runs]
