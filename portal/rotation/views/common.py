"""What every rotation page shares: the blueprint, the run lookup and the page contexts."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, abort
from flask_login import current_user
from sqlalchemy import Select, select
from sqlalchemy.orm import joinedload

from portal.db import get_session
from portal.models import Organization
from portal.rotation.controls import CONTROL_STATES, can_resume, failure_count
from portal.rotation.models import RotationEvent, RotationFailure, RotationRun
from portal.rotation.progress import progress
from portal.rotation.states import RunState

bp = Blueprint("rotation", __name__, url_prefix="/rotations")
# Asked before a cancel: by htmx's confirm dialog, or on a page of its own without JavaScript.
CANCEL_QUESTION = (
    "Cancel this run? Items already moved keep the new key, the rest keep the key they are "
    "under; every key stays available, every item stays readable, and the run can be resumed."
)


@bp.after_request
def _no_store(response: Response) -> Response:
    """Run pages show key state and live progress: never cached."""
    response.headers["Cache-Control"] = "no-store"
    return response


def run_or_404(run_id: uuid.UUID) -> RotationRun:
    """Load a run: support staff see every organisation's, admins only their own."""
    # The per-kind totals every view of a run shows, in the same statement (not a second).
    run = get_session().get(RotationRun, run_id, options=[joinedload(RotationRun.per_kind)])
    if run is None:
        abort(404)
    if current_user.role != "support" and run.company_id != current_user.company_id:
        abort(404)
    return run


def runs_query() -> Select:
    """Runs the current user may see, newest first."""
    query = select(RotationRun, Organization.name).join(
        Organization, Organization.id == RotationRun.company_id
    )
    if current_user.role != "support":
        query = query.where(RotationRun.company_id == current_user.company_id)
    return query.order_by(RotationRun.created_at.desc()).limit(200)


def progress_context(run: RotationRun) -> dict[str, Any]:
    """What the polled progress block renders from: the run and its range sums only.

    It is requested every second by every open run page, so it stays a few indexed reads;
    the history and failure lists are the separate, slower-polled history block.
    """
    p = progress(get_session(), run)
    return {
        "run": run,
        "p": p,
        "failed_total": p.failed,
        "can_control": current_user.role == "admin",
        "resumable": resumable(run),
        "cancel_question": CANCEL_QUESTION,
        "show_keys": current_user.role != "support",
    }


def resumable(run: RotationRun) -> bool:
    """Whether Resume is offered: paused, failed, or cancelled while the service allows it."""
    if run.state in CONTROL_STATES["resume"][0]:
        return True
    return run.state == RunState.CANCELLED and can_resume(get_session(), run)


def history_context(run: RotationRun) -> dict[str, Any]:
    """What the history block renders from: recent events and the listed failures."""
    db = get_session()
    events = list(
        db.scalars(
            select(RotationEvent)
            .where(RotationEvent.run_id == run.id)
            .order_by(RotationEvent.id.desc())
            .limit(50)
        )
    )
    failures = list(
        db.scalars(
            select(RotationFailure)
            .where(RotationFailure.run_id == run.id)
            .order_by(RotationFailure.id)
            .limit(100)
        )
    )
    return {
        "run": run,
        "events": events,
        "failures": failures,
        "failure_total": failure_count(db, run),
    }


def page_context(run: RotationRun) -> dict[str, Any]:
    """The whole run page: both blocks and the organisation's name."""
    return {
        **history_context(run),
        **progress_context(run),
        "org": get_session().get(Organization, run.company_id),
    }
