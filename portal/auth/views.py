"""Login and logout pages."""

from __future__ import annotations

import time
from urllib.parse import unquote, urlsplit

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from portal.audit.actions import Action
from portal.auth import bp
from portal.auth.forms import LoginForm, LogoutForm
from portal.auth.services import authenticate
from portal.db import get_session
from portal.events import emit
from portal.security import limiter

LOGIN_FAILED = "Email or password is not correct."


def _safe_next(target: str | None) -> str:
    """Return ``target`` (a path inside the portal) under the portal's prefix, else home."""
    if target and _is_portal_path(target):
        return request.script_root + target
    return url_for("home.index")


def _is_portal_path(target: str) -> bool:
    """Tell whether ``target`` is a plain path of this portal, however its path is encoded.

    Browsers read ``//host``, ``/\\host``, tabs and newlines, unicode look-alikes and dot
    segments in ways that can leave the site, so only printable ASCII is accepted, and the
    path rules hold for every percent-decoding of the path as well.
    """
    if not all(33 <= ord(ch) <= 126 for ch in target) or "\\" in target:
        return False
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return False
    path = parts.path
    for _ in range(4):
        if not _plain_path(path):
            return False
        decoded = unquote(path)
        if decoded == path:
            return True
        path = decoded
    return False


def _plain_path(path: str) -> bool:
    """One leading ``/``; no empty, ``.`` or ``..`` segment; printable ASCII, no backslash."""
    if not all(33 <= ord(ch) <= 126 for ch in path) or "\\" in path:
        return False
    if not path.startswith("/") or urlsplit(path).netloc:
        return False
    segments = path.split("/")[1:]
    return "" not in segments[:-1] and not {".", ".."} & set(segments)


def _login_email() -> str:
    """Rate-limit key: the account being signed in to (whatever the address)."""
    return "login:" + (request.form.get("email") or "").strip().lower()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOGIN_ADDRESS"], methods=["POST"])
@limiter.limit(
    lambda: current_app.config["RATELIMIT_LOGIN_ACCOUNT"], methods=["POST"], key_func=_login_email
)
def login():
    """Show the sign-in form and sign a user in."""
    if current_user.is_authenticated and request.method == "GET":
        return redirect(_safe_next(request.args.get("next")))
    form = LoginForm()
    if form.validate_on_submit():
        db = get_session()
        user, account = authenticate(db, form.email.data or "", form.password.data or "")
        if user is None:
            emit(db, Action.LOGIN_FAILED, outcome="failure", details={"email": form.email.data})
            if account is not None and account.company_id is not None:
                # The organisation sees attempts on its own accounts; the answer is the same.
                emit(
                    db,
                    Action.LOGIN_FAILED,
                    outcome="failure",
                    company_id=account.company_id,
                    details={"email": account.email},
                )
            db.commit()
            form.password.errors = [LOGIN_FAILED]
            return render_template("auth/login.html", form=form), 401
        # A fresh session at sign-in: nothing planted before login survives it.
        session.clear()
        login_user(user)
        session["reauth_at"] = None
        session["auth_at"] = session["seen_at"] = time.time()
        emit(db, Action.LOGIN, actor=user)
        db.commit()
        return redirect(_safe_next(request.args.get("next")))
    status = 422 if form.errors else 200
    if request.args.get("expired"):
        flash("Your session ended; please sign in again.")
    return render_template("auth/login.html", form=form), status


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    """Confirm and perform sign-out; signing out invalidates every copy of the cookie."""
    form = LogoutForm()
    if request.method == "POST" and form.validate_on_submit():
        if current_user.is_authenticated:
            db = get_session()
            user = db.merge(current_user._get_current_object())
            user.rotate_session_token()
            emit(db, Action.LOGOUT, actor=user)
            db.commit()
        logout_user()
        session.clear()
        flash("You are signed out.")
        return redirect(url_for("auth.login"))
    return render_template("auth/logout.html", form=form)
