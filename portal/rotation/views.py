"""Rotation pages: the runs list, a run's live progress, its controls and failures."""

from __future__ import annotations

import csv
import io
import uuid

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from sqlalchemy import select

from portal.auth.gates import require_role
from portal.db import get_session
from portal.htmx import HTTP_STOP_POLLING, is_htmx
from portal.models import Organization
from portal.rotation import service
from portal.rotation.models import ACTIVE_RUN_STATES, RotationEvent, RotationFailure, RotationRun

bp = Blueprint("rotation", __name__, url_prefix="/rotations")
CONTROLS = ("pause", "resume", "cancel")
# Sent with the final progress poll: the history block refreshes at once.
RUN_CHANGED = "run-changed"
# Failed items read per query by the CSV export.
FAILURES_CSV_PAGE = 1000
# Asked before a cancel: by htmx's confirm dialog, or on a page of its own without JavaScript.
CANCEL_QUESTION = (
    "Cancel this run? Items already moved keep the new key, the rest keep the key they are "
    "under; every key stays available, every item stays readable, and the run can be resumed."
)


@bp.after_request
def _no_store(response):
    """Run pages show key state and live progress: never cached."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _run_or_404(run_id: uuid.UUID) -> RotationRun:
    """Load a run: support staff see every organisation's, admins only their own."""
    run = get_session().get(RotationRun, run_id)
    if run is None:
        abort(404)
    if current_user.role != "support" and run.company_id != current_user.company_id:
        abort(404)
    return run


def _runs_query():
    """Runs the current user may see, newest first."""
    query = select(RotationRun, Organization.name).join(
        Organization, Organization.id == RotationRun.company_id
    )
    if current_user.role != "support":
        query = query.where(RotationRun.company_id == current_user.company_id)
    return query.order_by(RotationRun.created_at.desc()).limit(200)


@bp.get("")
@require_role("support", "admin")
def index():
    """List rotation runs (all organisations for support staff, one's own for admins)."""
    db = get_session()
    rows = [
        (run, org_name, service.progress(db, run)) for run, org_name in db.execute(_runs_query())
    ]
    return render_template("rotation/index.html", rows=rows)


def _progress_context(run: RotationRun) -> dict:
    """What the polled progress block renders from: the run and its range sums only.

    It is requested every second by every open run page, so it stays a few indexed reads;
    the history and failure lists are the separate, slower-polled history block.
    """
    p = service.progress(get_session(), run)
    return {
        "run": run,
        "p": p,
        "failed_total": p.failed,
        "can_control": current_user.role == "admin",
        "resumable": _resumable(run),
        "cancel_question": CANCEL_QUESTION,
        "show_keys": current_user.role != "support",
    }


def _resumable(run: RotationRun) -> bool:
    """Whether Resume is offered: paused, failed, or cancelled while the service allows it."""
    if run.state in service.CONTROL_STATES["resume"][0]:
        return True
    return run.state == "cancelled" and service.can_resume(get_session(), run)


def _history_context(run: RotationRun) -> dict:
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
        "failure_total": service.failure_count(db, run),
    }


def _page_context(run: RotationRun) -> dict:
    """The whole run page: both blocks and the organisation's name."""
    return {
        **_history_context(run),
        **_progress_context(run),
        "org": get_session().get(Organization, run.company_id),
    }


@bp.get("/<uuid:run_id>")
@require_role("support", "admin")
def show(run_id: uuid.UUID):
    """A run's live progress page."""
    return render_template("rotation/show.html", **_page_context(_run_or_404(run_id)))


@bp.get("/<uuid:run_id>/progress")
@require_role("support", "admin")
def progress(run_id: uuid.UUID):
    """The polled progress fragment; 286 once the run has ended, so polling stops.

    The page sends the state it shows (``known_state``). Only when the run's state differs
    does the answer also redraw the controls and the status line (out of band) and tell the
    page to refresh the history block; otherwise a focused control or a half-typed throttle
    is left alone, and nothing is announced.
    """
    context = _progress_context(_run_or_404(run_id))
    known = request.args.get("known_state")
    changed = known is not None and known != context["run"].state
    html = render_template("rotation/_progress.html", **context)
    if changed:
        html += render_template("rotation/_controls.html", oob=True, **context)
        html += render_template("rotation/_status.html", oob=True, **context)
    response = make_response(html)
    if changed or context["p"].finished:
        response.headers["HX-Trigger"] = RUN_CHANGED
    if context["p"].finished:
        response.status_code = HTTP_STOP_POLLING
    return response


@bp.get("/<uuid:run_id>/history")
@require_role("support", "admin")
def history(run_id: uuid.UUID):
    """The history and failures fragment, polled less often; 286 once the run has ended."""
    run = _run_or_404(run_id)
    html = render_template("rotation/_history.html", **_history_context(run))
    return html, HTTP_STOP_POLLING if run.state not in ACTIVE_RUN_STATES else 200


@bp.get("/<uuid:run_id>/status.json")
@require_role("support", "admin")
def status_json(run_id: uuid.UUID):
    """The run's progress as JSON (for scripts and monitoring)."""
    db = get_session()
    return service.progress(db, _run_or_404(run_id)).as_json()


@bp.get("/<uuid:run_id>/failures.csv")
@require_role("support", "admin")
def failures_csv(run_id: uuid.UUID):
    """Every failed item of the run as CSV (kind, id, reason): no content, no keys."""
    run = _run_or_404(run_id)
    columns = (
        RotationFailure.id,
        RotationFailure.kind,
        RotationFailure.item_id,
        RotationFailure.reason,
        RotationFailure.created_at,
    )

    def rows():
        # Streamed after the view returns: stream_with_context keeps the app context (and so
        # the session) alive until the last row. Pages by id, each its own short read, so a
        # slow download never holds a transaction open.
        db = get_session()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["kind", "item_id", "reason", "at"])
        yield buffer.getvalue()
        after = 0
        while True:
            page = db.execute(
                select(*columns)
                .where(RotationFailure.run_id == run_id, RotationFailure.id > after)
                .order_by(RotationFailure.id)
                .limit(FAILURES_CSV_PAGE)
            ).all()
            db.rollback()
            if not page:
                return
            buffer.seek(0)
            buffer.truncate()
            for failure_id, kind, item_id, reason, created_at in page:
                writer.writerow([kind, item_id, reason, created_at.isoformat()])
                after = failure_id
            yield buffer.getvalue()

    response = Response(stream_with_context(rows()), mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="rotation-{run.id}-failures.csv"'
    )
    return response


def _after_change(run: RotationRun, message: str, redraw_controls: bool = True):
    """Answer a control: the refreshed blocks (htmx) or the page.

    ``redraw_controls`` is false for a throttle change, which leaves the state as it was: the
    controls (and the value just typed, and focus) stay as they are.
    """
    db = get_session()
    db.commit()
    if run.state == "running":
        from jobs.rotation import enqueue_ranges

        enqueue_ranges(current_app._get_current_object(), run.id)
    if is_htmx():
        # The progress block anew (a control can restart a run whose page had stopped
        # polling: resume after a failure, retry), and out of band the notice, the controls
        # and status line for the new state, and the history.
        context = _page_context(run)
        html = render_template("rotation/_progress_block.html", **context)
        html += render_template("rotation/_notice.html", oob=True, message=message)
        if redraw_controls:
            html += render_template("rotation/_controls.html", oob=True, **context)
            html += render_template("rotation/_status.html", oob=True, **context)
        html += render_template("rotation/_history_block.html", oob=True, **context)
        response = make_response(html)
        response.headers["HX-Retarget"] = "#run-progress"
        response.headers["HX-Reswap"] = "outerHTML"
        return response
    flash(message)
    return redirect(url_for("rotation.show", run_id=run.id), code=303)


def _refused(run: RotationRun, message: str):
    """Answer a refused control with the message, changing nothing."""
    get_session().rollback()
    if is_htmx():
        return render_template("rotation/_notice.html", message=message, error=True), 409
    return render_template("rotation/show.html", notice_error=message, **_page_context(run)), 409


@bp.post("/<uuid:run_id>/<any(pause, resume, cancel):action>")
@require_role("admin")
def control(run_id: uuid.UUID, action: str):
    """Pause, resume or cancel a run of the admin's organisation.

    A cancel needs ``confirmed=yes``: htmx sends it after its confirm dialog; a plain form
    (no JavaScript) gets a confirmation page first.
    """
    run = _run_or_404(run_id)
    if action == "cancel" and request.form.get("confirmed") != "yes":
        if is_htmx():
            return _refused(run, "Confirm the cancellation first.")
        if run.state in service.CONTROL_STATES["cancel"][0]:
            return render_template(
                "rotation/confirm_cancel.html", run=run, cancel_question=CANCEL_QUESTION
            )
    try:
        service.control(get_session(), run, action, current_user)
    except service.RotationError as exc:
        return _refused(run, exc.message)
    messages = {
        "pause": "Paused. Workers stop after their current batch.",
        "resume": "Resumed.",
        "cancel": "Cancelled. Every item stays readable: items keep whichever key they "
        "have, every key stays available, and the run can be resumed.",
    }
    return _after_change(run, messages[action])


@bp.post("/<uuid:run_id>/throttle")
@require_role("admin")
def throttle(run_id: uuid.UUID):
    """Change the run's batches-per-second limit while it runs."""
    run = _run_or_404(run_id)
    raw = (request.form.get("max_batches_per_second") or "").strip()
    try:
        value = float(raw) if raw else None
        service.set_throttle(get_session(), run, value, current_user)
    except ValueError:
        return _refused(run, "The throttle must be a number of batches per second.")
    except service.RotationError as exc:
        return _refused(run, exc.message)
    return _after_change(
        run, f"Throttle: {value or 'unlimited'} batches per second.", redraw_controls=False
    )


@bp.post("/<uuid:run_id>/retry")
@require_role("admin")
def retry(run_id: uuid.UUID):
    """Send the run round again for the items it could not move."""
    run = _run_or_404(run_id)
    try:
        service.retry_failed(get_session(), run, current_user)
    except service.RotationError as exc:
        return _refused(run, exc.message)
    return _after_change(run, "Retrying the failed items.")
