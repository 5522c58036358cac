"""Company Settings → Audit Log."""

from flask import Blueprint, render_template
from flask_login import current_user

from portal.auth.gates import require_role
from portal.db import get_session
from portal.events import latest_events

bp = Blueprint("audit", __name__, url_prefix="/settings/audit")


@bp.get("")
@require_role("admin", "auditor")
def index():
    """Show the organisation's newest audit events."""
    events = latest_events(get_session(), current_user.company_id)
    return render_template("audit/index.html", events=events)
