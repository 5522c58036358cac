"""The signed-in landing page and the organisation's member list."""

from __future__ import annotations

import uuid

from flask import Blueprint, render_template
from flask_login import current_user
from sqlalchemy import select

from portal.auth.gates import get_owned_or_404, require_role
from portal.db import get_session
from portal.models import User

bp = Blueprint("home", __name__)


@bp.get("/")
@require_role()
def index():
    """Show what the signed-in user may open."""
    return render_template("home/index.html")


@bp.get("/settings/members")
@require_role("admin", "auditor")
def members():
    """List the people of the current user's organisation."""
    users = get_session().scalars(
        select(User).where(User.company_id == current_user.company_id).order_by(User.email)
    )
    return render_template("home/members.html", users=list(users))


@bp.get("/settings/members/<uuid:user_id>")
@require_role("admin", "auditor")
def member(user_id: uuid.UUID):
    """Show one member of the current user's organisation (404 for anyone else's)."""
    return render_template("home/member.html", user=get_owned_or_404(User, user_id))
