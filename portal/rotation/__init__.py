"""Key rotation runs: the support staff's view of re-encryption progress."""

from flask import Blueprint, render_template

from portal.auth.gates import require_role

bp = Blueprint("rotation", __name__, url_prefix="/rotations")


@bp.get("")
@require_role("support", "admin")
def index():
    """List rotation runs (all organisations for support, one's own for admins)."""
    return render_template("rotation/index.html", runs=[])
