"""Keys held in the customer's own key service: test, connect, re-wrap.

Shared by the wizard and the CLI (``key connect``, ``key rotate --rewrap``), with the same
checks, messages and audit events. The data key that encrypts the organisation's data is
generated here and only its wrapped copy is stored (portal/keys/wrapped.py); the key that
wraps it never leaves the customer's service.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import crypto
from portal.audit.actions import Action
from portal.events import emit
from portal.keys import custody as registry
from portal.keys import policy
from portal.keys.custody import CustodyError, KeyAccessRevoked, KeyRef, KeyServiceUnreachable
from portal.keys.custody.keyservice import PROVIDERS, KeyInfo, wrap_context
from portal.keys.errors import KeyOperationError, audits_refusals
from portal.keys.models import OrgKey
from portal.keys.service import USABLE_STATES, forget_cached_keys, mark_state
from portal.keys.steps import actor_label, require_eligible, require_no_run
from portal.keys.wrapped import client_for, ref_for, rewrap_row, wrap_new
from portal.models import Organization

MAX_REF = 2048


def tested_marker(provider: str, ref: str, role_arn: str | None) -> str:
    """What the wizard carries from Test to Save & Enable: the exact reference tested."""
    return f"{provider}|{ref}|{role_arn or ''}"


def read_ref(
    company_id: uuid.UUID, provider: str | None, ref: str | None, role_arn: str | None = None
) -> KeyRef:
    """Check a provider and key reference as typed; return the KeyRef or refuse with a field."""
    provider = (provider or "").strip()
    ref = (ref or "").strip()
    role_arn = (role_arn or "").strip() or None
    if provider not in PROVIDERS:
        raise KeyOperationError(
            f"Choose a key service: {', '.join(PROVIDERS)}.", field="provider", code="bad_provider"
        )
    try:
        client = client_for(provider)
    except CustodyError as exc:
        raise KeyOperationError(str(exc), field="provider", code="provider_unavailable") from None
    if not ref:
        raise KeyOperationError(
            f"Enter the {client.ref_label}.", field="key_ref", code="bad_key_ref"
        )
    problem = client.check_ref(ref) if len(ref) <= MAX_REF else "it is too long"
    if problem:
        raise KeyOperationError(
            f"That is not a {client.ref_label}: {problem}.", field="key_ref", code="bad_key_ref"
        )
    if role_arn and provider != "aws-kms":
        raise KeyOperationError(
            "A role to assume applies to AWS KMS only.", field="role_arn", code="bad_role"
        )
    if role_arn and (len(role_arn) > MAX_REF or not role_arn.startswith("arn:aws")):
        raise KeyOperationError(
            "The role must be an IAM role ARN (arn:aws:iam::<account>:role/<name>).",
            field="role_arn",
            code="bad_role",
        )
    return ref_for(company_id, provider, ref, role_arn)


def service_refusal(exc: CustodyError, ref: KeyRef) -> KeyOperationError:
    """Turn what the key service said into a refusal people can act on."""
    if isinstance(exc, KeyAccessRevoked):
        text = f"The key service refused access to {ref.ref}: {exc}"
    elif isinstance(exc, KeyServiceUnreachable):
        text = f"The key service did not answer: {exc}. Try again in {exc.retry_after} s."
    else:
        text = f"The key service could not use {ref.ref}: {exc}"
    return KeyOperationError(
        text, field="key_ref", code=exc.code, details={"key_ref": str(ref)[:300]}
    )


@audits_refusals(Action.KEY_SERVICE_TEST)
def test_connection(
    session: Session,
    org: Organization,
    actor: Any,
    provider: str | None,
    ref_text: str | None,
    role_arn: str | None = None,
) -> KeyInfo:
    """Wrap and unwrap a throwaway data key through the customer's key; audit the result."""
    require_eligible(org)
    ref = read_ref(org.id, provider, ref_text, role_arn)
    client = client_for(ref.provider)
    probe = crypto.generate_key()
    context = wrap_context(org.id, "test-" + secrets.token_hex(4))
    try:
        back = client.round_trip(ref, probe, context)
        info = client.describe(ref)
    except CustodyError as exc:
        raise service_refusal(exc, ref) from None
    if back != probe:
        raise KeyOperationError(
            "The key service returned a different key than it wrapped.",
            field="key_ref",
            code="round_trip_failed",
        )
    emit(
        session,
        Action.KEY_SERVICE_TEST,
        actor=actor,
        company_id=org.id,
        details={"custody": ref.provider, "key_ref": ref.ref, "version": info.version},
    )
    return info


@audits_refusals(Action.BYOK_ENABLED)
def connect(
    session: Session,
    org: Organization,
    actor: Any,
    provider: str | None,
    ref_text: str | None,
    role_arn: str | None = None,
    tested: str | None = None,
) -> OrgKey:
    """Make a data key wrapped by the customer's key the organisation's encrypting key."""
    require_eligible(org)
    require_no_run(session, org, "connecting a key")
    ref = read_ref(org.id, provider, ref_text, role_arn)
    if tested is not None and tested != tested_marker(ref.provider, ref.ref, ref.role_arn):
        raise KeyOperationError(
            "Test this key first: press Test, then Save & Enable.",
            field="key_ref",
            code="untested",
            details={"key_ref": str(ref)[:300]},
        )
    current = policy.active_key(session, org.id)
    if current is not None and current.origin != "platform":
        raise KeyOperationError(
            "BYOK is already enabled; to move to a key in your key service, use Rotate Key "
            "(full re-encryption).",
            code="already_enabled",
        )
    # The key service is asked first: a refusal leaves nothing changed but its audit event.
    label = actor_label(actor)
    row = store_external_key(session, org.id, ref, state="decrypt_only", actor=label)
    if current is not None:
        mark_state(current, "decrypt_only", label)
    mark_state(row, "active", label)
    emit(
        session,
        Action.BYOK_ENABLED,
        actor=actor,
        company_id=org.id,
        details={
            "fingerprint": row.fingerprint,
            "origin": "external",
            "custody": ref.provider,
            "key_ref": ref.ref,
        },
    )
    return row


def store_external_key(
    session: Session, org_id: uuid.UUID, ref: KeyRef, *, state: str, actor: str
) -> OrgKey:
    """Generate a data key, have the customer's key wrap it, and store only the wrapped copy."""
    try:
        _key, key_id_hex, wrapped = wrap_new(org_id, ref)
    except CustodyError as exc:
        raise service_refusal(exc, ref) from None
    row = OrgKey(
        company_id=org_id,
        key_id=key_id_hex,
        state=state,
        origin="external",
        sealed=wrapped,
        custody=ref.provider,
        key_ref=ref.ref,
        role_arn=ref.role_arn,
        created_by=actor,
        state_changed_by=actor,
    )
    session.add(row)
    session.flush()
    return row


@audits_refusals(Action.KEY_REWRAPPED)
def rewrap(
    session: Session,
    org: Organization,
    actor: Any,
    new_ref_text: str | None = None,
    role_arn: str | None = None,
) -> list[OrgKey]:
    """Re-wrap every stored data key of the active key's service under the newest version of
    its key, or under another key of the same service. No data row is touched."""
    require_eligible(org)
    active = policy.active_key(session, org.id)
    if active is None or not active.external:
        raise KeyOperationError(
            "Re-wrap applies to a key held in your key service; for a sealed key use a full "
            "rotation.",
            code="not_external",
        )
    target = read_ref(
        org.id,
        active.custody,
        new_ref_text or active.key_ref,
        role_arn if new_ref_text else active.role_arn,
    )
    rows = list(
        session.scalars(
            select(OrgKey).where(
                OrgKey.company_id == org.id,
                OrgKey.custody == active.custody,
                OrgKey.key_ref.is_not(None),
                OrgKey.sealed.is_not(None),
                OrgKey.state.in_(USABLE_STATES),
            )
        )
    )
    before = sorted({r.key_ref or "" for r in rows})
    # All or nothing: every copy is re-wrapped before any row changes, so a refusal half-way
    # leaves the rows as they were (only its audit event is kept).
    try:
        rewrapped = [rewrap_row(row, target) for row in rows]
    except CustodyError as exc:
        raise service_refusal(exc, target) from None
    for row, wrapped in zip(rows, rewrapped, strict=True):
        row.sealed, row.key_ref, row.role_arn = wrapped, target.ref, target.role_arn
    session.flush()
    client = registry.key_service(active.custody)
    if client is not None:
        client.forget()
    forget_cached_keys()
    emit(
        session,
        Action.KEY_REWRAPPED,
        actor=actor,
        company_id=org.id,
        details={
            "custody": target.provider,
            "from_key_ref": ", ".join(before),
            "to_key_ref": target.ref,
            "keys": len(rows),
            "fingerprints": ", ".join(r.fingerprint for r in rows),
        },
    )
    return rows
