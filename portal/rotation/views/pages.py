"""The rotation pages people read: the runs list, a run's page and its polled fragments."""

from __future__ import annotations

import uuid

from flask import make_response, render_template, request
from flask.typing import ResponseReturnValue

from portal.auth.gates import require_role
from portal.db import get_session
from portal.htmx import HTTP_STOP_POLLING
from portal.rotation.progress import progress as run_progress
from portal.rotation.progress import progress_of_runs
from portal.rotation.states import ACTIVE_RUN_STATES
from portal.rotation.views.common import (
    bp,
    history_context,
    page_context,
    progress_context,
    run_or_404,
    runs_query,
)

# Sent with the final progress poll: the history block refreshes at once.
RUN_CHANGED = "run-changed"


@bp.get("")
@require_role("support", "admin")
def index() -> ResponseReturnValue:
    """List rotation runs (all organisations for support staff, one's own for admins)."""
    db = get_session()
    listed = db.execute(runs_query()).all()
    figures = progress_of_runs(db, [run for run, _ in listed])
    rows = [(run, org_name, figures[run.id]) for run, org_name in listed]
    return render_template("rotation/index.html", rows=rows)


@bp.get("/<uuid:run_id>")
@require_role("support", "admin")
def show(run_id: uuid.UUID) -> ResponseReturnValue:
    """A run's live progress page."""
    return render_template("rotation/show.html", **page_context(run_or_404(run_id)))


@bp.get("/<uuid:run_id>/progress")
@require_role("support", "admin")
def progress(run_id: uuid.UUID) -> ResponseReturnValue:
    """The polled progress fragment; 286 once the run has ended, so polling stops.

    The page sends the state it shows (``known_state``). Only when the run's state differs
    does the answer also redraw the controls and the status line (out of band) and tell the
    page to refresh the history block; otherwise a focused control or a half-typed throttle
    is left alone, and nothing is announced.
    """
    context = progress_context(run_or_404(run_id))
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
def history(run_id: uuid.UUID) -> ResponseReturnValue:
    """The history and failures fragment, polled less often; 286 once the run has ended."""
    run = run_or_404(run_id)
    html = render_template("rotation/_history.html", **history_context(run))
    return html, HTTP_STOP_POLLING if run.state not in ACTIVE_RUN_STATES else 200


@bp.get("/<uuid:run_id>/status.json")
@require_role("support", "admin")
def status_json(run_id: uuid.UUID) -> ResponseReturnValue:
    """The run's progress as JSON (for scripts and monitoring)."""
    return run_progress(get_session(), run_or_404(run_id)).as_json()
