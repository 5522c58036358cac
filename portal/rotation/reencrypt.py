"""Full re-encryption under a new data key, into, out of or within a customer's key service.

Sealed to Vault, Vault to KMS, Vault to another Vault key after a suspected compromise, a key
service back to sealed: the same run as a rotation (portal.rotation.start), whose new key is
a fresh data key wrapped by the customer's key, or a pasted or generated key sealed here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.keys import operations as ops
from portal.keys.custody import KeyRef
from portal.keys.errors import KeyOperationError, audit_refusal
from portal.keys.external import store_external_key
from portal.keys.models import OrgKey
from portal.models import Organization
from portal.rotation.active import active_run
from portal.rotation.common import RotationError
from portal.rotation.models import RotationRun
from portal.rotation.sources import check_new_key, prove_current, rotatable_key, sources
from portal.rotation.start import IN_PROGRESS, begin_rotation, store_sealed


def start_reencryption(
    session: Session,
    org: Organization,
    actor: Any,
    *,
    target: KeyRef | None,
    new_text: str | None = None,
    current_text: str | None = None,
    generated_fingerprint: str | None = None,
) -> RotationRun:
    """Full re-encryption under a new data key: one in the customer's key service (``target``,
    from portal.keys.external.read_ref) or a pasted/generated key (``new_text``), sealed.

    Moves between custody kinds (sealed to Vault, Vault to KMS, back to sealed) or replaces
    a key after a suspected compromise. A sealed active key is proved with ``current_text``
    as for a rotation; an external one cannot be pasted, so the caller re-authenticates the
    admin instead. A refusal is audited as a failed ROTATION_STARTED, like a rotation's.
    """
    try:
        if active_run(session, org.id):
            raise RotationError(IN_PROGRESS)
        if (target is None) == (not (new_text or "").strip()):
            raise RotationError(
                "Choose the new key: a key in your key service, or a new key to paste.",
                field="new_key" if target is None else "key_ref",
                code="bad_target",
            )
        old = rotatable_key(session, org)
        current = None
        if not old.external:
            current = ops.read_key(current_text or "", field="current_key")
            prove_current(session, org, old, current)
        new = None if target else ops.read_key(new_text or "", field="new_key")
        if new is not None:
            check_new_key(session, org, new, current)
        wait = sources(session, org.id, "").wait()
        if wait is not None:
            raise RotationError(
                f"Items under a key of yours cannot be read now: {wait.reason}. "
                "Nothing was changed; try again once your key service answers.",
                code=wait.code,
            )
        if target is not None:
            row = store_external_key(
                session, org.id, target, state="active", actor=ops.actor_label(actor)
            )
        else:
            row = store_sealed(session, org, actor, new, generated_fingerprint)
    except KeyOperationError as exc:
        which = {"field": exc.field} if exc.field else {}
        audit_refusal(session, org, actor, Action.ROTATION_STARTED, exc, **which)
        raise
    details = {
        "mode": "full_reencryption",
        "from_custody": _custody(old),
        "to_custody": _custody(row),
        **({"from_key_ref": old.key_ref} if old.external else {}),
        **({"to_key_ref": row.key_ref} if row.external else {}),
    }
    return begin_rotation(session, org, actor, old, row, "Full re-encryption started", details)


def _custody(row: OrgKey) -> str:
    """Where a key lives, as audit details say it: the key service, or "sealed"."""
    return (row.custody or "sealed") if row.external else "sealed"
