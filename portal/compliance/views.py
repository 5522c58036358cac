"""The Compliance Policies page."""

from flask import current_app, render_template
from flask_login import current_user

from portal.auth.gates import require_role
from portal.compliance import bp


@bp.get("")
@require_role("admin", "auditor")
def index():
    """Show the deployment tier and, for eligible organisations, BYOK configuration."""
    org = current_user.organization
    return render_template(
        "compliance/index.html",
        org=org,
        deployment=current_app.config["BYOK_DEPLOYMENT"],
        read_only=current_user.role != "admin",
    )
