"""The BYOK wizard's page and its first steps: generate, test and enable a key."""

from __future__ import annotations

from flask import render_template
from flask_login import current_user

from portal import crypto
from portal.auth.gates import require_role
from portal.compliance import bp
from portal.compliance.wizard import (
    attempt,
    context,
    current_org,
    done,
    forget_generated,
    forms,
    generated_here,
    key_ops_limit,
    refused,
    remember_generated,
    still_tested,
    submitted,
)
from portal.db import get_session
from portal.htmx import is_htmx
from portal.keyformat import format_key
from portal.keys import operations as ops
from portal.keys import policy
from portal.keys.errors import KeyOperationError
from portal.keys.transaction import key_operation


@bp.after_request
def _no_store(response):
    """Pages and fragments here show key state: never cache them anywhere."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.get("")
@require_role("admin", "auditor")
def index():
    """Show the deployment tier and, for eligible organisations, BYOK configuration."""
    return render_template("compliance/index.html", **context(current_org()))


@bp.get("/byok")
@require_role("admin", "auditor")
def byok_section():
    """Return the BYOK section alone (status panel and actions)."""
    org = current_org()
    if not policy.byok_eligible(org):
        return render_template("compliance/_upgrade.html", **context(org))
    return render_template("compliance/_byok.html", **context(org))


@bp.post("/byok/generate")
@require_role("admin")
def generate():
    """Generate a key and show it once; the server keeps only its fingerprint in the session."""
    org = current_org()
    submitted("generate")
    key = crypto.generate_key()
    try:
        with key_operation(get_session()) as db:
            fp = ops.record_generated(db, org, current_user, key)
    except KeyOperationError as exc:
        return render_template(
            "errors/_error.html", status=403, title="Not available", message=exc.message
        ), 403
    remember_generated(fp)
    shown = {"generated_key": format_key(key), "fingerprint": fp}
    if is_htmx():
        return render_template("compliance/_generated.html", **shown)
    return render_template("compliance/index.html", **context(org, **shown))


@bp.post("/byok/test")
@require_role("admin")
@key_ops_limit
def test():
    """Encrypt and decrypt a test message with the pasted key; show the fingerprint."""
    org = current_org()
    form = submitted("enable")
    form.tested_fingerprint.data = ""
    fp = attempt(
        form,
        org,
        lambda: ops.test_key(get_session(), org, current_user, form.key.data or ""),
        needs_reauth=False,
    )
    if fp is None:
        return refused("enable", form, org)
    form.tested_fingerprint.data = fp
    if is_htmx():
        return render_template(
            "compliance/_feedback.html", form=form, form_name="enable", tested=fp
        )
    return render_template(
        "compliance/index.html", **context(org, forms=forms(enable=form), tested=fp)
    )


@bp.post("/byok/enable")
@require_role("admin")
@key_ops_limit
def enable():
    """Save & Enable: seal the tested key and make it the organisation's encrypting key."""
    org = current_org()
    form = submitted("enable")
    row = attempt(
        form,
        org,
        lambda: ops.enable(
            get_session(),
            org,
            current_user,
            form.key.data or "",
            form.tested_fingerprint.data or "",
            generated_here(form.key.data),
        ),
        needs_reauth=True,
    )
    if row is None:
        # A mistyped password must not make the admin test the key again.
        return refused("enable", form, org, tested=still_tested(form))
    forget_generated(row.fingerprint)
    return done(f"BYOK is enabled with key {row.fingerprint}. New data is encrypted with it.", org)
