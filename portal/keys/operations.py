"""BYOK key operations, shared by the wizard and the CLI: same checks, messages and events.

Generating, testing, enabling and disabling live here; losing, revoking and restoring a key
in portal/keys/loss.py, the status panel's view in portal/keys/status.py. All of them are
importable from this module, as callers always have.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal import crypto
from portal.audit.actions import Action
from portal.events import emit
from portal.keys import policy
from portal.keys.errors import KeyOperationError, audits_refusals
from portal.keys.errors import audit_refusal as audit_refusal  # re-exported for callers
from portal.keys.loss import declare_lost as declare_lost
from portal.keys.loss import restore as restore
from portal.keys.loss import revoke as revoke
from portal.keys.models import OrgKey
from portal.keys.service import forget_cached_keys, mark_state, store_key
from portal.keys.status import KeyStatus as KeyStatus
from portal.keys.status import item_counts as item_counts
from portal.keys.status import status as status
from portal.keys.steps import (
    activate_platform_key,
    confirm_slug_typed,
    known_key,
    read_key,
    require_eligible,
    require_no_run,
    self_test_failed,
)
from portal.keys.steps import actor_label as actor_label
from portal.models import Organization


@audits_refusals(Action.KEY_GENERATED)
def record_generated(session: Session, org: Organization, actor: Any, key: bytes) -> str:
    """Audit that a key was generated and shown once; return its fingerprint."""
    require_eligible(org)
    fp = crypto.fingerprint(crypto.key_id(key))
    emit(session, Action.KEY_GENERATED, actor=actor, company_id=org.id, details={"fingerprint": fp})
    return fp


@audits_refusals(Action.KEY_TEST)
def test_key(session: Session, org: Organization, actor: Any, text: str) -> str:
    """Round-trip a test message through the pasted key; audit and return its fingerprint."""
    require_eligible(org)
    key = read_key(text)
    fp = crypto.fingerprint(crypto.key_id(key))
    if not crypto.self_test(key):
        raise self_test_failed(fp)
    emit(
        session,
        Action.KEY_TEST,
        actor=actor,
        company_id=org.id,
        details={"fingerprint": fp},
    )
    return fp


@audits_refusals(Action.BYOK_ENABLED)
def enable(
    session: Session,
    org: Organization,
    actor: Any,
    text: str,
    tested_fingerprint: str,
    generated_fingerprint: str | None = None,
) -> OrgKey:
    """Make a tested key the organisation's encrypting key; new data is encrypted with it."""
    require_eligible(org)
    require_no_run(session, org, "enabling a key")
    key = read_key(text)
    fp = crypto.fingerprint(crypto.key_id(key))
    if tested_fingerprint != fp:
        raise KeyOperationError(
            "Test this key first: press Test Key, then Save & Enable.",
            field="key",
            code="untested",
            details={"fingerprint": fp},
        )
    if not crypto.self_test(key):
        raise self_test_failed(fp)
    current = policy.active_key(session, org.id)
    if current is not None and current.origin != "platform":
        raise KeyOperationError(
            "BYOK is already enabled; use Rotate Key to change the key.", code="already_enabled"
        )
    if known_key(session, org, crypto.key_id(key).hex()) is not None:
        raise KeyOperationError(
            "This key was used by your organisation before; use a new key (or Restore key).",
            field="key",
            code="reused",
            details={"fingerprint": fp},
        )
    label = actor_label(actor)
    if current is not None:
        mark_state(current, "decrypt_only", label)
    origin = "generated" if generated_fingerprint == fp else "imported"
    row = store_key(session, org.id, key, origin=origin, state="active", actor=label)
    forget_cached_keys()
    emit(
        session,
        Action.BYOK_ENABLED,
        actor=actor,
        company_id=org.id,
        details={"fingerprint": fp, "origin": origin},
    )
    return row


@audits_refusals(Action.BYOK_DISABLED)
def disable(
    session: Session, org: Organization, actor: Any, confirm_slug: str, acknowledged: bool
) -> OrgKey:
    """Switch BYOK off (Organization Community only): new data goes under a platform key."""
    if policy.byok_required(org):
        raise KeyOperationError(
            "BYOK is required for Dedicated and On-Premise deployments and cannot be disabled; "
            "rotate the key instead, or declare it lost and enable a new one.",
            code="byok_required",
        )
    require_no_run(session, org, "disabling BYOK")
    current = policy.active_key(session, org.id)
    if current is None or current.origin == "platform":
        raise KeyOperationError("BYOK is not enabled.", code="not_enabled")
    confirm_slug_typed(org, confirm_slug)
    if not acknowledged:
        raise KeyOperationError(
            "Confirm that your compliance and legal teams were consulted.",
            field="acknowledge",
            code="not_acknowledged",
        )
    label = actor_label(actor)
    mark_state(current, "decrypt_only", label)
    platform = activate_platform_key(session, org, label)
    emit(
        session,
        Action.BYOK_DISABLED,
        actor=actor,
        company_id=org.id,
        details={"fingerprint": current.fingerprint, "platform_fingerprint": platform.fingerprint},
    )
    return platform
