"""A worker's share of a rotation run: claim a range, re-encrypt it batch by batch, let go.

A claim names the host, the worker process and the job process, so that the supervisor of
a worker that dies can hand its ranges back at once (portal.rotation.watchdog). A range whose
key service refuses or does not answer waits for it and is tried again (wait_for_key_service).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import timedelta

from flask import Flask
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from portal.audit import aggregate
from portal.chat import kinds
from portal.db import scrub_rewritten, utcnow
from portal.rotation import engine
from portal.rotation.common import WAITING, KeyServiceWait, RotationError, log_event, waiting_for
from portal.rotation.models import RotationRange, RotationRun
from portal.rotation.progress import progress
from portal.rotation.queue import enqueue_range_later, enqueue_ranges, job_session
from portal.rotation.sources import keyring_for_run
from portal.rotation.states import RangeState, RunState
from portal.rotation.verify import verify_and_finish

# The pid of the RQ worker process whose job processes (work-horses) run these jobs, set
# before it forks them: claims name it, so its supervisor can release them if it dies.
_worker_pid: int | None = None


def set_worker_process(pid: int) -> None:
    """Name the worker process that this process's jobs will run under."""
    global _worker_pid
    _worker_pid = pid


def claim_label() -> str:
    """host:WORKER:JOB:nonce, the worker process and the job process (the same without fork)."""
    job = os.getpid()
    return f"{socket.gethostname()}:{_worker_pid or job}:{job}:{uuid.uuid4().hex[:6]}"


def claim(db: Session, run_id: uuid.UUID, range_id: int, me: str, stale: int) -> bool:
    """Take the range unless another live worker holds it or it is done."""
    now = utcnow()
    taken = db.execute(
        update(RotationRange)
        .where(
            RotationRange.id == range_id,
            RotationRange.run_id == run_id,
            (RotationRange.state == RangeState.PENDING)
            | (
                (RotationRange.state == RangeState.RUNNING)
                & (
                    (RotationRange.heartbeat_at.is_(None))
                    | (RotationRange.heartbeat_at < now - timedelta(seconds=stale))
                )
            ),
        )
        .values(
            state=RangeState.RUNNING,
            worker=me,
            heartbeat_at=now,
            attempts=RotationRange.attempts + 1,
        )
    ).rowcount
    db.commit()
    return bool(taken)


def release(
    db: Session, range_id: int, me: str, state: str = RangeState.PENDING, queued: bool = False
) -> None:
    """Hand the range back (or mark it done) if this worker still holds it; ``queued`` when
    its next job is already scheduled (the watchdog leaves it alone until it goes stale)."""
    now = utcnow()
    db.execute(
        update(RotationRange)
        .where(RotationRange.id == range_id, RotationRange.worker == me)
        .values(state=state, worker=None, enqueued_at=now if queued else None, heartbeat_at=now)
    )
    db.commit()


def wait_for_key_service(
    app: Flask, db: Session, run_id: uuid.UUID, range_id: int, me: str, wait: KeyServiceWait
) -> str:
    """A key service the run needs refused or did not answer: note it on the run once, hand
    the range back with its checkpoint and try it again in a few seconds. Nothing failed."""
    db.rollback()
    noted = db.execute(
        update(RotationRun)
        .where(
            RotationRun.id == run_id,
            RotationRun.state == RunState.RUNNING,
            RotationRun.error.is_(None) | ~RotationRun.error.startswith(WAITING),
        )
        .values(error=wait.note)
    ).rowcount
    if noted:
        log_event(db, db.get(RotationRun, run_id), wait.note)
    db.commit()
    release(db, range_id, me, queued=True)
    enqueue_range_later(app, run_id, range_id, wait.delay)
    return f"waiting for the key service: {wait.code}"


def key_service_answered(db: Session, run: RotationRun) -> None:
    """Clear the run's waiting note once the keys it needs are usable again (noted once)."""
    if waiting_for(run.error) is None:
        return
    cleared = db.execute(
        update(RotationRun)
        .where(RotationRun.id == run.id, RotationRun.error.startswith(WAITING))
        .values(error=None)
    ).rowcount
    if cleared:
        log_event(db, run, "The key service answered again; the run goes on")
    db.commit()


def _run_state(db: Session, run_id: uuid.UUID) -> tuple[str, float | None]:
    """The run's state and throttle as they are now, the read ended at once.

    A wait inside a transaction keeps the backend `idle in transaction`, and a connection
    dropped meanwhile would cost the range.
    """
    state, throttle = db.execute(
        select(RotationRun.state, RotationRun.max_batches_per_second).where(
            RotationRun.id == run_id
        )
    ).one()
    db.commit()
    return state, throttle


def _checkpoint(db: Session, range_id: int, me: str, result: engine.BatchResult) -> bool:
    """Move the range's cursor and counts past a batch, if this worker still holds it."""
    return bool(
        db.execute(
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
    )


def process_range(app: Flask, run_id: uuid.UUID, range_id: int) -> str:
    """Re-encrypt one range in batches for up to a time slice, checkpointing each batch."""
    cfg = app.config
    me = claim_label()
    with job_session(app) as db:
        if not claim(db, run_id, range_id, me, cfg["ROTATION_STALE_SECONDS"]):
            return "not claimed"
        run = db.get(RotationRun, run_id)
        rng = db.get(RotationRange, range_id)
        kind = kinds.get(rng.kind)
        old = run.old_key_ids.split(",")
        try:
            ring = keyring_for_run(db, run)
        except KeyServiceWait as waiting:
            return wait_for_key_service(app, db, run_id, range_id, me, waiting)
        except RotationError as exc:
            release(db, range_id, me)
            return f"waiting: {exc}"
        key_service_answered(db, run)
        cursor, lo, hi, company = rng.cursor, rng.lo, rng.hi, run.company_id
        new_key = run.new_key_id
        deadline = time.monotonic() + cfg["ROTATION_SLICE_SECONDS"]
        last_batch = 0.0
        while True:
            state, throttle = _run_state(db, run_id)
            if state != RunState.RUNNING:
                release(db, range_id, me)
                return f"stopped: run is {state}"
            if throttle:
                wait = last_batch + 1.0 / throttle - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                    continue  # look at the run again: it may have been paused meanwhile
            last_batch = time.monotonic()
            try:
                result = engine.run_batch(
                    db.connection(),
                    run_id,
                    kind,
                    company,
                    old,
                    new_key,
                    ring,
                    cursor,
                    lo,
                    hi,
                    cfg["ROTATION_BATCH_ROWS"],
                    cfg["ROTATION_BATCH_BYTES"],
                )
            except KeyServiceWait as waiting:
                # Rolled back: nothing of the batch is written, the checkpoint stays before it.
                return wait_for_key_service(app, db, run_id, range_id, me, waiting)
            if result.last_id is None:
                db.rollback()
                release(db, range_id, me, state=RangeState.DONE)
                finish_if_done(app, run_id)
                return "done"
            if result.failed:
                failed = [f"{i}:{r}" for i, r in result.failed]
                aggregate.record(db, company, ",".join(old), kind.name, failed, "system")
            if not _checkpoint(db, range_id, me, result):
                db.rollback()  # another worker took the range over: leave it all to them
                return "lost claim"
            db.commit()
            cursor = result.last_id
            if time.monotonic() > deadline:
                release(db, range_id, me)
                enqueue_ranges(app, run_id)
                return "sliced"


def finish_if_done(
    app: Flask, run_id: uuid.UUID, from_states: tuple[str, ...] = (RunState.RUNNING,)
) -> None:
    """When every range is done, verify the run and complete it (or send it round again)."""
    with job_session(app) as db:
        pending = exists().where(
            RotationRange.run_id == run_id, RotationRange.state != RangeState.DONE
        )
        moved = db.execute(
            update(RotationRun)
            .where(RotationRun.id == run_id, RotationRun.state.in_(from_states), ~pending)
            .values(state=RunState.VERIFYING)
        ).rowcount
        db.commit()
        if not moved:
            return
        run = db.get(RotationRun, run_id)
        outcome = verify_and_finish(db, run)
        db.commit()
        totals = progress(db, run).kinds
        rewritten = [kinds.get(name).table for name, n in totals.items() if n["total"]]
    if outcome == RunState.RUNNING:
        enqueue_ranges(app, run_id)
    elif outcome == RunState.COMPLETED:
        # After the completion commit: old ciphertext must not linger in the database files.
        scrub_rewritten(app.extensions["db_engine"], rewritten)
