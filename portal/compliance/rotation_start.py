"""Starting runs from the wizard: rotate the key, encrypt existing data, move leftovers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, redirect, render_template, url_for
from flask_login import current_user

from portal import crypto
from portal.audit.actions import Action
from portal.auth.gates import require_role
from portal.compliance import bp
from portal.compliance.views import generate
from portal.compliance.wizard import (
    attempt,
    context,
    current_org,
    forget_generated,
    forms,
    generated_here,
    key_ops_limit,
    refuse,
    refused,
    still_tested,
    submitted,
)
from portal.db import get_session
from portal.htmx import hx_redirect, is_htmx
from portal.keys.errors import KeyOperationError
from portal.models import Organization


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
    from portal.rotation.sources import check_keys

    org = current_org()
    form = submitted("rotate")
    form.tested_fingerprint.data = ""
    pair = attempt(
        form,
        org,
        lambda: check_keys(
            get_session(), org, form.current_key.data or "", form.new_key.data or ""
        ),
        needs_reauth=False,
        audit_as=Action.KEY_TEST,
        step="rotation",
    )
    if pair is None:
        return refused("rotate", form, org)
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
        "compliance/index.html", **context(org, forms=forms(rotate=form), rotate_tested=tested)
    )


@bp.post("/rotate/start")
@require_role("admin")
@key_ops_limit
def rotate_start():
    """Perform Rotation: the new key encrypts from now on; workers re-encrypt the rest."""
    from portal.rotation.start import start_rotation

    org = current_org()
    form = submitted("rotate")
    tested = still_tested(form, "new_key")
    if tested is None:
        untested = KeyOperationError(
            "Press Test Keys first, then Perform Rotation.", field="new_key", code="untested"
        )
        attempt(form, org, refuse(untested), needs_reauth=False, audit_as=Action.ROTATION_STARTED)
        return refused("rotate", form, org)
    run = attempt(
        form,
        org,
        lambda: start_rotation(
            get_session(),
            org,
            current_user,
            form.current_key.data or "",
            form.new_key.data or "",
            generated_here(form.new_key.data),
        ),
        needs_reauth=True,
        audit_as=Action.ROTATION_STARTED,
    )
    if run is None:
        return refused(
            "rotate", form, org, tested=tested, tested_field="new_key", rotate_tested=tested
        )
    forget_generated(tested)
    return queued(run.id)


@bp.post("/byok/encrypt-existing")
@require_role("admin")
def encrypt_existing():
    """Move every item not under the organisation's BYOK key (platform keys too) onto it."""
    from portal.rotation.start import start_encrypt_existing

    return _start_move("generate", start_encrypt_existing)


@bp.post("/byok/move-leftover")
@require_role("admin")
def move_leftover():
    """Move the items left under older keys (the page's warning) to the active key."""
    from portal.rotation.start import start_move_to_active

    return _start_move("leftover", start_move_to_active)


def _start_move(name: str, start: Callable[..., Any]):
    """Start an encrypt-existing run from the page, audited, and go to its progress page."""
    org: Organization = current_org()
    form = submitted(name)
    run = attempt(
        form,
        org,
        lambda: start(get_session(), org, current_user),
        needs_reauth=False,
        audit_as=Action.ENCRYPT_EXISTING_STARTED,
    )
    if run is None:
        return refused(name, form, org)
    return queued(run.id)


def queued(run_id: Any):
    """Queue a started run's ranges (it is committed) and go to its progress page."""
    from portal.rotation.queue import enqueue_ranges

    enqueue_ranges(current_app._get_current_object(), run_id)
    target = url_for("rotation.show", run_id=run_id)
    return hx_redirect(target) if is_htmx() else redirect(target, code=303)
