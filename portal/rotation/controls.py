"""What people do to a run once it is going: pause, resume, cancel, throttle and retry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.chat import kinds
from portal.db import utcnow
from portal.events import emit
from portal.keys import policy
from portal.rotation.active import active_run
from portal.rotation.common import RotationError, log_event
from portal.rotation.models import RotationFailure, RotationRange, RotationRun
from portal.rotation.progress import progress, settle_figures
from portal.rotation.sources import (
    count_items,
    log_sources,
    report_unmovable,
    source_list,
    sources,
)
from portal.rotation.start import IN_PROGRESS
from portal.rotation.states import RangeState, RunState

CONTROL_STATES = {
    "pause": ({RunState.RUNNING, RunState.QUEUED}, RunState.PAUSED),
    "resume": ({RunState.PAUSED, RunState.FAILED}, RunState.RUNNING),
    "cancel": (
        {RunState.RUNNING, RunState.QUEUED, RunState.PAUSED, RunState.FAILED},
        RunState.CANCELLED,
    ),
}
# Written out, not built from the verb, so the Audit Log's Type menu test can read them.
CONTROL_EVENTS = {
    "pause": Action.ROTATION_PAUSED,
    "resume": Action.ROTATION_RESUMED,
    "cancel": Action.ROTATION_CANCELLED,
}


def control(session: Session, run: RotationRun, action: str, actor: Any) -> RotationRun:
    """Pause, resume or cancel a run (workers notice at their next batch).

    A cancelled run can be resumed while nothing has superseded it (see ``can_resume``).
    """
    allowed, target = CONTROL_STATES[action]
    was = run.state
    if action == "resume" and was == RunState.CANCELLED:
        problem = resume_refusal(session, run)
        if problem:
            raise RotationError(problem)
        _reopen(session, run)
    elif run.state not in allowed:
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
        raise RotationError(f"A {run.state} run cannot be {done}.")
    run.state = target
    if action == "cancel":
        run.finished_at = utcnow()
        settle_figures(session, run)
        log_event(
            session,
            run,
            "Cancelled: items keep whichever key they have; every key stays available, "
            "and the run can be resumed",
        )
    else:
        verb = "Paused" if action == "pause" else "Resumed"
        log_event(session, run, verb)
    if action == "resume":
        session.execute(
            update(RotationRange)
            .where(RotationRange.run_id == run.id, RotationRange.state != RangeState.DONE)
            .values(state=RangeState.PENDING, worker=None, enqueued_at=None)
        )
    emit(
        session,
        CONTROL_EVENTS[action],
        actor=actor,
        company_id=run.company_id,
        details={"run_id": str(run.id), **({"from_state": was} if action == "resume" else {})},
    )
    return run


def resume_refusal(session: Session, run: RotationRun) -> str | None:
    """Why the run cannot be resumed now, or None when it can.

    A paused or failed run always can. A cancelled one can while it is its organisation's
    latest run, no other run is in progress, and its target key is still the active key:
    a key change since the cancellation means a new run must decide where items go.
    """
    if run.state in CONTROL_STATES["resume"][0]:
        return None
    if run.state != RunState.CANCELLED:
        return f"A {run.state} run cannot be resumed."
    if active_run(session, run.company_id):
        return IN_PROGRESS
    latest = session.scalar(
        select(RotationRun.id)
        .where(RotationRun.company_id == run.company_id)
        .order_by(RotationRun.created_at.desc())
        .limit(1)
    )
    if latest != run.id:
        return "A later run was started since this one was cancelled; it cannot be resumed."
    active = policy.active_key(session, run.company_id)
    if active is None or active.key_id != run.new_key_id:
        return (
            "The run's new key is no longer the active key; start a new rotation or use "
            "Move them to the active key instead."
        )
    return None


def can_resume(session: Session, run: RotationRun) -> bool:
    """Whether a Resume control applies to the run (paused, failed, or resumable cancelled)."""
    return resume_refusal(session, run) is None


def _restart_ranges(session: Session, run: RotationRun) -> None:
    """Forget the run's listed failures and send every range back to its beginning."""
    session.execute(RotationFailure.__table__.delete().where(RotationFailure.run_id == run.id))
    session.execute(
        update(RotationRange)
        .where(RotationRange.run_id == run.id)
        .values(state=RangeState.PENDING, cursor=None, worker=None, enqueued_at=None, failed=0)
    )


def _reopen(session: Session, run: RotationRun) -> None:
    """Prepare a cancelled run to go on: every readable key but its target, fresh totals.

    The ranges start again from their beginning (items already moved are no longer under a
    source key, so they are not read again) and keep their counts of items moved.
    """
    found = sources(session, run.company_id, run.new_key_id)
    keys = source_list(found) or run.old_key_ids.split(",")
    run.old_key_ids = ",".join(keys)
    done = progress(session, run)
    left = count_items(session, run.company_id, keys)
    for kind in kinds.all_kinds():
        run.set_total(kind.name, done.kinds[kind.name]["done"] + left[kind.name])
    _restart_ranges(session, run)
    run.finished_at = None
    log_event(session, run, f"Resuming the cancelled run: {sum(left.values())} items to move")
    log_sources(session, run, keys, found)
    report_unmovable(session, run, found)


def set_throttle(session: Session, run: RotationRun, per_second: float | None, actor: Any) -> None:
    """Limit how many batches per second each worker runs (None: no limit)."""
    if per_second is not None and not 0 < per_second <= 1000:
        raise RotationError(
            "The throttle must be between 0 and 1000 batches per second.",
            field="max_batches_per_second",
        )
    run.max_batches_per_second = per_second
    log_event(session, run, f"Throttle set to {per_second or 'unlimited'} batches/s")
    emit(
        session,
        Action.ROTATION_THROTTLED,
        actor=actor,
        company_id=run.company_id,
        details={"run_id": str(run.id), "max_batches_per_second": per_second},
    )


def retry_failed(session: Session, run: RotationRun, actor: Any) -> RotationRun:
    """Run another pass over the items a completed run could not move."""
    if run.state != RunState.COMPLETED or not failure_count(session, run):
        raise RotationError("Only a completed run with failed items can be retried.")
    if active_run(session, run.company_id):
        raise RotationError(IN_PROGRESS)
    _restart_ranges(session, run)
    run.state, run.finished_at = RunState.RUNNING, None
    log_event(session, run, "Retry of failed items started")
    emit(
        session,
        Action.ROTATION_RETRY,
        actor=actor,
        company_id=run.company_id,
        details={"run_id": str(run.id)},
    )
    return run


def failure_count(session: Session, run: RotationRun) -> int:
    """How many items the run listed as failed."""
    return (
        session.scalar(
            select(func.count())
            .select_from(RotationFailure)
            .where(RotationFailure.run_id == run.id)
        )
        or 0
    )
