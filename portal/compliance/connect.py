"""Connect a key in your key service: Test it, then Save & Enable (the wizard's third option).

Only the provider, the key reference and (AWS) a role travel through the page; none is a
secret. Test leaves its marker (``external.tested_marker``) in the form, as Test Key leaves
the tested fingerprint, and Save & Enable refuses a reference that was not tested.
"""

from __future__ import annotations

from typing import Any

from flask import render_template
from flask_login import current_user
from flask_wtf import FlaskForm

from portal.auth.gates import require_role
from portal.compliance import bp
from portal.compliance.custody import (
    choices,
    kept_message,
    marker_of,
    ok,
    still_marked,
    tested_message,
)
from portal.compliance.wizard import (
    attempt,
    context,
    current_org,
    done,
    forms,
    key_ops_limit,
    refused,
    submitted,
)
from portal.db import get_session
from portal.htmx import is_htmx
from portal.keys import external
from portal.keys.custody.keyservice import KeyInfo
from portal.models import Organization


def service_test(name: str, button: str) -> Any:
    """Run Test for a form naming a key service and answer with the key's version or why not."""
    org = current_org()
    form = submitted(name)
    form.tested.data = ""
    info = attempt(form, org, lambda: _test_connection(form, org), needs_reauth=False)
    if info is None:
        return refused(name, form, org)
    form.tested.data = marker_of(form.provider.data, form.key_ref.data, form.role_arn.data)
    passed = ok(name, "key_ref", tested_message(info, button))
    if is_htmx():
        return render_template("compliance/_feedback.html", form=form, form_name=name, ok=passed)
    page = context(org, forms=forms(**{name: form}), ok=passed)
    return render_template("compliance/index.html", **page)


def service_refused(name: str, form: FlaskForm, org: Organization, button: str) -> Any:
    """Answer a refused step; a reference that passed Test stays tested (say, a wrong password)."""
    form.tested.data = still_marked(form) or ""
    kept = None
    if form.tested.data and not form.key_ref.errors:
        kept = ok(name, "key_ref", kept_message(button))
    return refused(name, form, org, ok=kept)


def _test_connection(form: FlaskForm, org: Organization) -> KeyInfo:
    """Wrap and unwrap a throwaway data key through the reference in the form (audited)."""
    return external.test_connection(
        get_session(),
        org,
        current_user,
        form.provider.data,
        form.key_ref.data,
        form.role_arn.data,
    )


@bp.post("/byok/connect/test")
@require_role("admin")
@key_ops_limit
def connect_test():
    """Test: the key service wraps and unwraps a test data key; show its key version."""
    return service_test("connect", "Save & Enable")


@bp.post("/byok/connect")
@require_role("admin")
@key_ops_limit
def connect():
    """Save & Enable: a data key wrapped by the tested key encrypts the organisation's data."""
    org = current_org()
    form = submitted("connect")
    row = attempt(
        form,
        org,
        lambda: external.connect(
            get_session(),
            org,
            current_user,
            form.provider.data,
            form.key_ref.data,
            form.role_arn.data,
            # Never None: None would skip the check that Test passed for this reference.
            tested=form.tested.data or "",
        ),
        needs_reauth=True,
    )
    if row is None:
        return service_refused("connect", form, org, "Save & Enable")
    return done(
        f"BYOK is enabled with your key {row.key_ref} in {choices().label(row.custody)}. "
        f"New data is encrypted with data key {row.fingerprint}, which only that key unwraps.",
        org,
    )
