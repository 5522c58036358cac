"""A run's controls: pause, resume, cancel, throttle and retry, for the organisation's admins."""

from __future__ import annotations

import uuid

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from portal.auth.gates import require_role
from portal.db import get_session
from portal.htmx import is_htmx
from portal.rotation import controls as run_controls
from portal.rotation.common import RotationError
from portal.rotation.models import RotationRun
from portal.rotation.queue import enqueue_ranges
from portal.rotation.states import RunState
from portal.rotation.views.common import CANCEL_QUESTION, bp, page_context, run_or_404

MESSAGES = {
    "pause": "Paused. Workers stop after their current batch.",
    "resume": "Resumed.",
    "cancel": "Cancelled. Every item stays readable: items keep whichever key they "
    "have, every key stays available, and the run can be resumed.",
}


def _after_change(
    run: RotationRun, message: str, redraw_controls: bool = True
) -> ResponseReturnValue:
    """Answer a control: the refreshed blocks (htmx) or the page.

    ``redraw_controls`` is false for a throttle change, which leaves the state as it was: the
    controls (and the value just typed, and focus) stay as they are.
    """
    db = get_session()
    db.commit()
    if run.state == RunState.RUNNING:
        enqueue_ranges(current_app._get_current_object(), run.id)
    if is_htmx():
        # The progress block anew (a control can restart a run whose page had stopped
        # polling: resume after a failure, retry), and out of band the notice, the controls
        # and status line for the new state, and the history.
        context = page_context(run)
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


def _refused(run: RotationRun, message: str) -> ResponseReturnValue:
    """Answer a refused control with the message, changing nothing."""
    get_session().rollback()
    if is_htmx():
        return render_template("rotation/_notice.html", message=message, error=True), 409
    return render_template("rotation/show.html", notice_error=message, **page_context(run)), 409


@bp.post("/<uuid:run_id>/<any(pause, resume, cancel):action>")
@require_role("admin")
def control(run_id: uuid.UUID, action: str) -> ResponseReturnValue:
    """Pause, resume or cancel a run of the admin's organisation.

    A cancel needs ``confirmed=yes``: htmx sends it after its confirm dialog; a plain form
    (no JavaScript) gets a confirmation page first.
    """
    run = run_or_404(run_id)
    if action == "cancel" and request.form.get("confirmed") != "yes":
        if is_htmx():
            return _refused(run, "Confirm the cancellation first.")
        if run.state in run_controls.CONTROL_STATES["cancel"][0]:
            return render_template(
                "rotation/confirm_cancel.html", run=run, cancel_question=CANCEL_QUESTION
            )
    try:
        run_controls.control(get_session(), run, action, current_user)
    except RotationError as exc:
        return _refused(run, exc.message)
    return _after_change(run, MESSAGES[action])


@bp.post("/<uuid:run_id>/throttle")
@require_role("admin")
def throttle(run_id: uuid.UUID) -> ResponseReturnValue:
    """Change the run's batches-per-second limit while it runs."""
    run = run_or_404(run_id)
    raw = (request.form.get("max_batches_per_second") or "").strip()
    try:
        value = float(raw) if raw else None
        run_controls.set_throttle(get_session(), run, value, current_user)
    except ValueError:
        return _refused(run, "The throttle must be a number of batches per second.")
    except RotationError as exc:
        return _refused(run, exc.message)
    return _after_change(
        run, f"Throttle: {value or 'unlimited'} batches per second.", redraw_controls=False
    )


@bp.post("/<uuid:run_id>/retry")
@require_role("admin")
def retry(run_id: uuid.UUID) -> ResponseReturnValue:
    """Send the run round again for the items it could not move."""
    run = run_or_404(run_id)
    try:
        run_controls.retry_failed(get_session(), run, current_user)
    except RotationError as exc:
        return _refused(run, exc.message)
    return _after_change(run, "Retrying the failed items.")
