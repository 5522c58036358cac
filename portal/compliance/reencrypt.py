"""Changing a key held in a key service: Re-wrap, or Full re-encryption to a new data key.

- **Re-wrap** (the customer rotated the key inside their service, or wants another key of
  the same service to wrap the data key): only the wrapped data keys are rewritten, in
  seconds; no data row is touched.
- **Full re-encryption** (after a suspected compromise, or moving between custody kinds):
  a new data key, wrapped by a key service or sealed here, and the rotation engine moves
  every item to it in the background, with live progress.
"""

from __future__ import annotations

from typing import Any

from flask import render_template
from flask_login import current_user
from flask_wtf import FlaskForm
from markupsafe import Markup

from portal.audit.actions import Action
from portal.auth.gates import require_role
from portal.compliance import bp
from portal.compliance.connect import service_refused, service_test
from portal.compliance.custody import ok
from portal.compliance.rotation_start import queued
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
    still_tested,
    submitted,
)
from portal.db import get_session
from portal.htmx import is_htmx
from portal.keys import external
from portal.keys import operations as ops
from portal.keys.errors import KeyOperationError
from portal.models import Organization

START = "Start full re-encryption"


@bp.post("/rotate/rewrap")
@require_role("admin")
@key_ops_limit
def rewrap():
    """Re-wrap every data key of the active key's service under its newest (or another) key."""
    org = current_org()
    form = submitted("rewrap")
    rows = attempt(
        form,
        org,
        lambda: external.rewrap(
            get_session(),
            org,
            current_user,
            (form.key_ref.data or "").strip() or None,
            (form.role_arn.data or "").strip() or None,
        ),
        needs_reauth=True,
    )
    if rows is None:
        return refused("rewrap", form, org)
    ref = rows[0].key_ref if rows else ""
    count = f"{len(rows)} data key{'' if len(rows) == 1 else 's'}"
    return done(
        f"Re-wrapped: {count} now wrapped by the newest version of {ref}. "
        "No item was re-encrypted.",
        org,
    )


@bp.post("/rotate/reencrypt/test")
@require_role("admin")
@key_ops_limit
def reencrypt_test():
    """Test the key service key a full re-encryption would move to."""
    return service_test("reencrypt", START)


@bp.post("/rotate/reencrypt")
@require_role("admin")
@key_ops_limit
def reencrypt():
    """Full re-encryption to a new data key wrapped by the tested key-service key."""
    org = current_org()
    form = submitted("reencrypt")
    run = attempt(
        form,
        org,
        lambda: _to_service(form, org),
        needs_reauth=True,
        audit_as=Action.ROTATION_STARTED,
    )
    if run is None:
        return service_refused("reencrypt", form, org, START)
    return queued(run.id)


@bp.post("/rotate/reencrypt-sealed/test")
@require_role("admin")
@key_ops_limit
def reencrypt_sealed_test():
    """Test Key for a full re-encryption to a sealed key: the key round-trips a message."""
    org = current_org()
    form = submitted("reencrypt_sealed")
    form.tested_fingerprint.data = ""
    fp = attempt(
        form,
        org,
        lambda: _on_new_key(lambda: ops.test_key(get_session(), org, current_user, _new(form))),
        needs_reauth=False,
    )
    if fp is None:
        return refused("reencrypt_sealed", form, org)
    form.tested_fingerprint.data = fp
    shown = {"tested": fp, "tested_field": "new_key", "ok": sealed_ok(fp)}
    if is_htmx():
        return render_template(
            "compliance/_feedback.html", form=form, form_name="reencrypt_sealed", **shown
        )
    page = context(org, forms=forms(reencrypt_sealed=form), **shown)
    return render_template("compliance/index.html", **page)


@bp.post("/rotate/reencrypt-sealed")
@require_role("admin")
@key_ops_limit
def reencrypt_sealed():
    """Full re-encryption from the key-service key to the tested sealed key."""
    org = current_org()
    form = submitted("reencrypt_sealed")
    tested = still_tested(form, "new_key")
    run = attempt(
        form,
        org,
        lambda: _on_new_key(lambda: _to_sealed(form, org, tested)),
        needs_reauth=True,
        audit_as=Action.ROTATION_STARTED,
    )
    if run is None:
        shown = {"tested": tested, "tested_field": "new_key", "ok": sealed_ok(tested)}
        return refused("reencrypt_sealed", form, org, **(shown if tested else {}))
    forget_generated(tested or "")
    return queued(run.id)


def _to_service(form: FlaskForm, org: Organization) -> Any:
    """Start the run to a new data key wrapped by the form's reference, once Test passed."""
    from portal.rotation.reencrypt import start_reencryption

    target = external.read_ref(org.id, form.provider.data, form.key_ref.data, form.role_arn.data)
    if form.tested.data != external.tested_marker(target.provider, target.ref, target.role_arn):
        raise KeyOperationError(
            f"Test this key first: press Test, then {START}.", field="key_ref", code="untested"
        )
    return start_reencryption(
        get_session(),
        org,
        current_user,
        target=target,
        current_text=form.current_key.data or None,
    )


def _to_sealed(form: FlaskForm, org: Organization, tested: str | None) -> Any:
    """Start the run to the form's new key, sealed here, once Test Key passed for it."""
    from portal.rotation.reencrypt import start_reencryption

    if tested is None:
        raise KeyOperationError(
            f"Press Test Key first, then {START}.", field="new_key", code="untested"
        )
    return start_reencryption(
        get_session(),
        org,
        current_user,
        target=None,
        new_text=_new(form),
        generated_fingerprint=generated_here(form.new_key.data),
    )


def sealed_ok(fp: str) -> dict[str, Any]:
    """Test Key passed for the new sealed key: its fingerprint, and what to press next."""
    return ok(
        "reencrypt_sealed",
        "new_key",
        Markup(
            "Test passed: the key encrypted and decrypted a test message. Fingerprint "
            '<code data-testid="tested-fingerprint">{}</code>. Check it matches your vault, '
            "then press <strong>{}</strong>."
        ).format(fp, START),
    )


def _new(form: FlaskForm) -> str:
    """The pasted new key's text."""
    return form.new_key.data or ""


def _on_new_key(operation: Any) -> Any:
    """Run an operation whose refusals about "the key" belong to this form's new_key field."""
    try:
        return operation()
    except KeyOperationError as exc:
        if exc.field == "key":
            exc.field = "new_key"
        raise
