"""The confirmed key steps: disable BYOK, declare a key lost, restore it, revoke access."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session

from portal.auth.gates import require_role
from portal.compliance import bp
from portal.compliance.wizard import attempt, current_org, done, key_ops_limit, refused, submitted
from portal.db import get_session
from portal.keys import operations as ops
from portal.models import Organization

Step = Callable[[Session, Organization, FlaskForm], Any]


def _key_step(name: str, operation: Step, message: Callable[[Any], str]):
    """Run one confirmed key step (re-authenticated) and answer it, refused or done."""
    org = current_org()
    form = submitted(name)
    row = attempt(form, org, lambda: operation(get_session(), org, form), needs_reauth=True)
    if row is None:
        return refused(name, form, org)
    return done(message(row), org)


@bp.post("/byok/disable")
@require_role("admin")
def disable():
    """Switch BYOK off (Organization Community only)."""
    return _key_step(
        "disable",
        lambda db, org, form: ops.disable(
            db, org, current_user, form.confirm_slug.data, form.acknowledge.data
        ),
        lambda row: "BYOK is disabled. New data is encrypted with a platform-managed key.",
    )


@bp.post("/byok/lost")
@require_role("admin")
def declare_lost():
    """Declare the BYOK key lost."""
    return _key_step(
        "lost",
        lambda db, org, form: ops.declare_lost(db, org, current_user, form.confirm_slug.data),
        lambda row: (
            f"Key {row.fingerprint} is declared lost; its items are unreadable until "
            "it is restored from a backup."
        ),
    )


@bp.post("/byok/restore")
@require_role("admin")
@key_ops_limit
def restore():
    """Restore a lost or unavailable key from the admin's backup."""
    return _key_step(
        "restore",
        lambda db, org, form: ops.restore(db, org, current_user, form.key.data or ""),
        lambda row: (
            f"Key {row.fingerprint} is restored ({row.state.replace('_', '-')}); its "
            "data is readable again."
        ),
    )


@bp.post("/byok/revoke")
@require_role("admin")
def revoke():
    """Revoke key access: destroy the sealed copy until the admin restores the key."""
    return _key_step(
        "revoke",
        lambda db, org, form: ops.revoke(db, org, current_user, form.confirm_slug.data),
        lambda row: (
            f"Access to key {row.fingerprint} is revoked. Nothing under it can be read "
            "until you restore it."
        ),
    )
