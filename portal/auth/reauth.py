"""Re-authentication for key operations: the password again, valid for a few minutes."""

from __future__ import annotations

import time

from flask import current_app, session
from flask_login import current_user

from portal.audit.actions import Action
from portal.auth.passwords import verify_password
from portal.db import get_session
from portal.events import emit

REAUTH_MESSAGE = "Enter your password to confirm this key operation."
WRONG_PASSWORD = "That password is not correct."  # noqa: S105 - a message


def is_fresh() -> bool:
    """Tell whether the user re-entered their password within the allowed window."""
    at = session.get("reauth_at")
    return bool(at) and time.time() - float(at) < current_app.config["REAUTH_SECONDS"]


def confirm(password: str | None) -> str | None:
    """Check re-authentication; return an error message for the password field, or None.

    A wrong password is an audit event in the caller's transaction: the wizard runs this in
    ``key_operation``, which keeps it whether or not the step goes on.
    """
    if is_fresh() and not password:
        return None
    if not password:
        return REAUTH_MESSAGE
    if not verify_password(current_user.password_hash, password):
        emit(get_session(), Action.REAUTH_FAILED, outcome="failure", actor=current_user)
        return WRONG_PASSWORD
    session["reauth_at"] = time.time()
    return None
