"""Organization Settings → Compliance Policies: the BYOK wizard, as htmx partials and pages."""

from __future__ import annotations

from typing import Any

from flask import (
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    session,
    url_for,
)
from flask_login import current_user
from flask_wtf import FlaskForm

from portal import crypto
from portal.auth import reauth
from portal.auth.gates import require_role
from portal.compliance import bp
from portal.compliance.forms import (
    ConfirmForm,
    DisableForm,
    GenerateForm,
    KeyForm,
    RestoreForm,
    RotateForm,
)
from portal.db import get_session
from portal.htmx import is_htmx
from portal.keyformat import format_key
from portal.keys import operations as ops
from portal.keys import policy
from portal.keys.runs import run_in_progress
from portal.models import Organization
from portal.security import limiter

FORMS = {
    "enable": KeyForm,
    "restore": RestoreForm,
    "disable": DisableForm,
    "lost": ConfirmForm,
    "revoke": ConfirmForm,
    "generate": GenerateForm,
    "rotate": RotateForm,
    "leftover": GenerateForm,  # "Move them to the active key" (CSRF token only)
}


# The fingerprints (never the keys) of the keys generated in this session, newest last.
GENERATED = "generated_fingerprints"
GENERATED_KEPT = 20


def _remember_generated(fp: str) -> None:
    """Note that this session generated the key with this fingerprint."""
    kept = [f for f in session.get(GENERATED, []) if f != fp]
    session[GENERATED] = [*kept[-(GENERATED_KEPT - 1) :], fp]


def _generated_here(text: str) -> str | None:
    """Return the pasted key's fingerprint if this session generated it, else None."""
    try:
        fp = crypto.fingerprint(crypto.key_id(ops.read_key(text or "")))
    except ops.KeyOperationError:
        return None
    return fp if fp in session.get(GENERATED, []) else None


def _forget_generated(fp: str) -> None:
    """Drop a fingerprint once its key is in use (a key is never enabled twice)."""
    session[GENERATED] = [f for f in session.get(GENERATED, []) if f != fp]


def _user_key() -> str:
    """Rate-limit key for key operations: the signed-in user's id (never the session token,
    so signing in again does not reset the allowance, and no token reaches Redis)."""
    return f"key-ops:{current_user.id}"


# One allowance per admin across every key operation (a shared scope), not one per route.
key_ops_limit = limiter.shared_limit(
    lambda: current_app.config["RATELIMIT_KEY_OPERATIONS"], scope="key-ops", key_func=_user_key
)


@bp.after_request
def _no_store(response):
    """Pages and fragments here show key state: never cache them anywhere."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _org() -> Organization:
    """Return the signed-in user's organisation."""
    return get_session().get(Organization, current_user.company_id)


def _forms(**given: FlaskForm) -> dict[str, FlaskForm]:
    """Return a form per action, using the submitted one where given."""
    return {name: given.get(name) or cls(formdata=None) for name, cls in FORMS.items()}


def _context(org: Organization, **extra: Any) -> dict[str, Any]:
    """Everything the page and its fragments render from."""
    eligible = policy.byok_eligible(org)
    return {
        "org": org,
        "deployment": current_app.config["BYOK_DEPLOYMENT"],
        "isolated": policy.isolated(org),
        "eligible": eligible,
        "status": ops.status(get_session(), org) if eligible else None,
        "read_only": current_user.role != "admin",
        "sales_url": current_app.config["SALES_URL"],
        "reauth_fresh": reauth.is_fresh(),
        "active_run": run_in_progress(get_session(), org.id) if eligible else None,
        "forms": extra.pop("forms", None) or _forms(),
        **extra,
    }


@bp.get("")
@require_role("admin", "auditor")
def index():
    """Show the deployment tier and, for eligible organisations, BYOK configuration."""
    return render_template("compliance/index.html", **_context(_org()))


@bp.get("/byok")
@require_role("admin", "auditor")
def byok_section():
    """Return the BYOK section alone (status panel and actions)."""
    org = _org()
    if not policy.byok_eligible(org):
        return render_template("compliance/_upgrade.html", **_context(org))
    return render_template("compliance/_byok.html", **_context(org))


def _refused(name: str, form: FlaskForm, org: Organization, **extra: Any):
    """Answer a refused step: field errors swapped in place (htmx) or the page again."""
    if is_htmx():
        return render_template("compliance/_feedback.html", form=form, form_name=name, **extra), 422
    forms = _forms(**{name: form})
    html = render_template("compliance/index.html", **_context(org, forms=forms, **extra))
    return html, 422


def _still_tested(form: FlaskForm, field: str = "key") -> str | None:
    """The fingerprint a refused step should keep: the tested key is still the posted one."""
    try:
        fp = crypto.fingerprint(crypto.key_id(ops.read_key(getattr(form, field).data or "")))
    except ops.KeyOperationError:
        return None
    return fp if fp == form.tested_fingerprint.data else None


def _done(message: str, org: Organization):
    """Answer a completed step: the whole BYOK section re-rendered, or a redirect."""
    get_session().commit()
    if is_htmx():
        response = make_response(
            render_template("compliance/_byok.html", **_context(org, done_message=message))
        )
        response.headers["HX-Retarget"] = "#byok"
        response.headers["HX-Reswap"] = "outerHTML"
        return response
    flash(message)
    return redirect(url_for("compliance.index"), code=303)


def _submitted(name: str) -> FlaskForm:
    """Bind and validate the posted form of an action (CSRF is checked globally)."""
    form = FORMS[name]()
    form.validate()
    return form


def _attempt(
    name: str,
    form: FlaskForm,
    org: Organization,
    operation,
    needs_reauth: bool,
    audit_as: str | None = None,
    **details: str,
):
    """Run an operation after re-authentication, mapping refusals onto form fields.

    Key operations audit their own refusals; ``audit_as`` names the action under which a
    refusal not yet audited (a rotation step) is recorded, with the field it concerns.
    """
    if needs_reauth:
        problem = reauth.confirm(getattr(form, "password", None) and form.password.data)
        if problem:
            form.password.errors = [problem]
            return None
    try:
        return operation()
    except ops.KeyOperationError as exc:
        _refusal(form, org, exc, audit_as, **details)
        return None


def _refusal(
    form: FlaskForm, org: Organization, exc: ops.KeyOperationError, audit_as: str | None, **details
) -> None:
    """Audit a refused step (kept even though the step changed nothing) and show its message."""
    if audit_as:
        which = {"field": exc.field} if exc.field else {}
        ops.audit_refusal(get_session(), org, current_user, audit_as, exc, **details, **which)
    get_session().commit()
    field = getattr(form, exc.field, None) if exc.field else None
    target = field if field is not None else form.form_errors
    if isinstance(target, list):
        target.append(exc.message)
    else:
        target.errors = [*target.errors, exc.message]


@bp.post("/byok/generate")
@require_role("admin")
def generate():
    """Generate a key and show it once; the server keeps only its fingerprint in the session."""
    org = _org()
    _submitted("generate")
    key = crypto.generate_key()
    try:
        fp = ops.record_generated(get_session(), org, current_user, key)
    except ops.KeyOperationError as exc:
        get_session().commit()  # keep the audit event of the refusal
        return render_template(
            "errors/_error.html", status=403, title="Not available", message=exc.message
        ), 403
    get_session().commit()
    _remember_generated(fp)
    context = {"generated_key": format_key(key), "fingerprint": fp}
    if is_htmx():
        return render_template("compliance/_generated.html", **context)
    return render_template("compliance/index.html", **_context(org, **context))


@bp.post("/byok/test")
@require_role("admin")
@key_ops_limit
def test():
    """Encrypt and decrypt a test message with the pasted key; show the fingerprint."""
    org = _org()
    form = _submitted("enable")
    form.tested_fingerprint.data = ""
    fp = _attempt(
        "enable",
        form,
        org,
        lambda: ops.test_key(get_session(), org, current_user, form.key.data or ""),
        needs_reauth=False,
    )
    get_session().commit()
    if fp is None:
        return _refused("enable", form, org)
    form.tested_fingerprint.data = fp
    if is_htmx():
        return render_template(
            "compliance/_feedback.html", form=form, form_name="enable", tested=fp
        )
    html = render_template(
        "compliance/index.html", **_context(org, forms=_forms(enable=form), tested=fp)
    )
    return html


@bp.post("/byok/enable")
@require_role("admin")
@key_ops_limit
def enable():
    """Save & Enable: seal the tested key and make it the organisation's encrypting key."""
    org = _org()
    form = _submitted("enable")
    row = _attempt(
        "enable",
        form,
        org,
        lambda: ops.enable(
            get_session(),
            org,
            current_user,
            form.key.data or "",
            form.tested_fingerprint.data or "",
            _generated_here(form.key.data),
        ),
        needs_reauth=True,
    )
    if row is None:
        # A mistyped password must not make the admin test the key again.
        return _refused("enable", form, org, tested=_still_tested(form))
    _forget_generated(row.fingerprint)
    return _done(f"BYOK is enabled with key {row.fingerprint}. New data is encrypted with it.", org)


def _key_step(name: str, operation, message):
    """Run one confirmed key step (re-authenticated) and answer it, refused or done."""
    org = _org()
    form = _submitted(name)
    row = _attempt(name, form, org, lambda: operation(get_session(), org, form), needs_reauth=True)
    if row is None:
        return _refused(name, form, org)
    return _done(message(row), org)


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


@bp.post("/rotate/generate")
@require_role("admin")
def rotate_generate():
    """Generate the new key for a rotation, shown once like the wizard's."""
    return generate()


@bp.post("/rotate/test")
@require_role("admin")
@key_ops_limit
def rotate_test():
    """Test Keys: the current key must match the active key and decrypt a stored item."""
    from portal.rotation import service as rotation

    org = _org()
    form = _submitted("rotate")
    form.tested_fingerprint.data = ""
    pair = _attempt(
        "rotate",
        form,
        org,
        lambda: rotation.check_keys(
            get_session(), org, form.current_key.data or "", form.new_key.data or ""
        ),
        needs_reauth=False,
        audit_as="BYOK.key_test",
        step="rotation",
    )
    get_session().commit()
    if pair is None:
        return _refused("rotate", form, org)
    tested = crypto.fingerprint(crypto.key_id(pair[1]))
    if is_htmx():
        return render_template(
            "compliance/_feedback.html",
            form=form,
            form_name="rotate",
            tested=tested,
            tested_field="new_key",
        )
    return render_template(
        "compliance/index.html", **_context(org, forms=_forms(rotate=form), rotate_tested=tested)
    )


@bp.post("/rotate/start")
@require_role("admin")
@key_ops_limit
def rotate_start():
    """Perform Rotation: the new key encrypts from now on; workers re-encrypt the rest."""
    from jobs.rotation import enqueue_ranges
    from portal.htmx import hx_redirect
    from portal.rotation import service as rotation

    org = _org()
    form = _submitted("rotate")
    tested = _still_tested(form, "new_key")
    if tested is None:
        untested = ops.KeyOperationError(
            "Press Test Keys first, then Perform Rotation.", field="new_key", code="untested"
        )
        _refusal(form, org, untested, "BYOK.rotation_started")
        return _refused("rotate", form, org)
    run = _attempt(
        "rotate",
        form,
        org,
        lambda: rotation.start_rotation(
            get_session(),
            org,
            current_user,
            form.current_key.data or "",
            form.new_key.data or "",
            _generated_here(form.new_key.data),
        ),
        needs_reauth=True,
        audit_as="BYOK.rotation_started",
    )
    if run is None:
        return _refused(
            "rotate", form, org, tested=tested, tested_field="new_key", rotate_tested=tested
        )
    get_session().commit()
    _forget_generated(tested)
    enqueue_ranges(current_app._get_current_object(), run.id)
    target = url_for("rotation.show", run_id=run.id)
    return hx_redirect(target) if is_htmx() else redirect(target, code=303)


@bp.post("/byok/encrypt-existing")
@require_role("admin")
def encrypt_existing():
    """Move every item not under the organisation's BYOK key (platform keys too) onto it."""
    from portal.rotation import service as rotation

    return _start_move("generate", rotation.start_encrypt_existing)


@bp.post("/byok/move-leftover")
@require_role("admin")
def move_leftover():
    """Move the items left under older keys (the page's warning) to the active key."""
    from portal.rotation import service as rotation

    return _start_move("leftover", rotation.start_move_to_active)


def _start_move(name: str, start):
    """Start an encrypt-existing run from the page, audited, and go to its progress page."""
    from jobs.rotation import enqueue_ranges
    from portal.htmx import hx_redirect

    org = _org()
    form = _submitted(name)
    run = _attempt(
        name,
        form,
        org,
        lambda: start(get_session(), org, current_user),
        needs_reauth=False,
        audit_as="BYOK.encrypt_existing_started",
    )
    if run is None:
        return _refused(name, form, org)
    get_session().commit()
    enqueue_ranges(current_app._get_current_object(), run.id)
    target = url_for("rotation.show", run_id=run.id)
    return hx_redirect(target) if is_htmx() else redirect(target, code=303)
