"""Losing and getting back a key: declare it lost, revoke access (kill switch), restore it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal import crypto
from portal.audit.actions import Action
from portal.events import emit
from portal.keys import policy
from portal.keys.errors import KeyOperationError, audits_refusals
from portal.keys.models import OrgKey
from portal.keys.service import forget_cached_keys, load_keys, mark_state, seal_context
from portal.keys.steps import (
    activate_platform_key,
    actor_label,
    confirm_slug_typed,
    known_key,
    read_key,
    require_no_run,
)
from portal.models import Organization


@audits_refusals(Action.KEY_DECLARED_LOST)
def declare_lost(session: Session, org: Organization, actor: Any, confirm_slug: str) -> OrgKey:
    """Declare the active BYOK key lost: its sealed copy is destroyed, its items unreadable."""
    require_no_run(session, org, "declaring the key lost")
    current = policy.active_key(session, org.id)
    if current is None or current.origin == "platform":
        raise KeyOperationError("There is no BYOK key to declare lost.", code="not_enabled")
    confirm_slug_typed(org, confirm_slug)
    label = actor_label(actor)
    current.sealed = None
    mark_state(current, "lost", label)
    details = {"fingerprint": current.fingerprint}
    if not policy.byok_required(org):
        details["platform_fingerprint"] = activate_platform_key(session, org, label).fingerprint
    emit(session, Action.KEY_DECLARED_LOST, actor=actor, company_id=org.id, details=details)
    return current


@audits_refusals(Action.KEY_RESTORE)
def restore(session: Session, org: Organization, actor: Any, text: str) -> OrgKey:
    """Take a key back from the admin's backup; accepted only if the organisation had it."""
    key = read_key(text)
    key_id_hex = crypto.key_id(key).hex()
    row = known_key(session, org, key_id_hex)
    fp = crypto.fingerprint(crypto.key_id(key))
    loaded = load_keys(session, org.id)
    if row is None or row.origin == "platform":
        raise KeyOperationError(
            f"No key of your organisation has fingerprint {fp}; check you pasted the right backup.",
            field="key",
            code="unknown_key",
            details={"fingerprint": fp},
        )
    if row.external:
        raise KeyOperationError(
            f"Key {fp} is held in your key service ({row.key_ref}): it is readable again as soon "
            "as the key service allows access, with nothing to paste here.",
            field="key",
            code="external_key",
            details={"fingerprint": fp},
        )
    if loaded.effective_state(row) not in ("lost", "unavailable"):
        raise KeyOperationError(
            f"Key {fp} is {row.state}; there is nothing to restore.",
            field="key",
            code="not_restorable",
            details={"fingerprint": fp, "state": row.state},
        )
    from portal.keys.service import custody

    backend = custody()
    if backend is None:
        raise KeyOperationError(
            "No master key is loaded: run `byok-portal init` first.", code="no_master_key"
        )
    label = actor_label(actor)
    row.sealed = backend.seal(key, seal_context(org.id, key_id_hex))
    row.custody = backend.name
    if row.state in ("lost", "unavailable"):
        current = policy.active_key(session, org.id)
        if current is None or current.origin == "platform":
            if current is not None:
                mark_state(current, "decrypt_only", label)
            mark_state(row, "active", label)
        else:
            mark_state(row, "decrypt_only", label)
    forget_cached_keys()
    emit(
        session,
        Action.KEY_RESTORED,
        actor=actor,
        company_id=org.id,
        details={"fingerprint": fp, "state": row.state},
    )
    return row


@audits_refusals(Action.KEY_REVOKED)
def revoke(session: Session, org: Organization, actor: Any, confirm_slug: str) -> OrgKey:
    """Kill switch: destroy the active BYOK key's sealed copy until the admin restores it."""
    require_no_run(session, org, "revoking the key")
    current = policy.active_key(session, org.id)
    if current is None or current.origin == "platform":
        raise KeyOperationError("There is no BYOK key to revoke.", code="not_enabled")
    if current.external:
        # Destroying the wrapped copy would lose the data for good (there is no backup of a
        # data key to paste back); the customer's own service is the kill switch.
        raise KeyOperationError(
            f"This key is held in your key service ({current.key_ref}): revoke the portal's "
            "access there; reads and writes stop within the data-key cache time.",
            code="external_key",
        )
    confirm_slug_typed(org, confirm_slug)
    current.sealed = None
    mark_state(current, "unavailable", actor_label(actor))
    emit(
        session,
        Action.KEY_REVOKED,
        actor=actor,
        company_id=org.id,
        details={"fingerprint": current.fingerprint},
    )
    return current
