"""Starting a run: a rotation to a new key, or moving existing items onto the active key.

A full re-encryption into or out of a customer's key service starts in portal.rotation.reencrypt
through the same steps (``store_sealed``, ``begin_rotation``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal import crypto
from portal.audit.actions import Action
from portal.db import utcnow
from portal.events import emit
from portal.keys import operations as ops
from portal.keys import policy
from portal.keys.models import OrgKey
from portal.keys.service import forget_cached_keys, mark_state, store_key
from portal.models import Organization
from portal.rotation.active import active_run
from portal.rotation.common import RotationError, log_event
from portal.rotation.models import RotationRun
from portal.rotation.planning import plan_ranges
from portal.rotation.sources import (
    check_keys,
    count_items,
    fingerprints,
    log_sources,
    report_unmovable,
    source_list,
    sources,
)
from portal.rotation.states import RunState

IN_PROGRESS = "A rotation is already in progress for this organisation."


def _new_run(
    session: Session, org: Organization, actor: Any, kind: str, old: list[str], new: str
) -> RotationRun:
    """Create a run with its totals and ranges."""
    run = RotationRun(
        company_id=org.id,
        kind=kind,
        old_key_ids=",".join(old),
        new_key_id=new,
        state=RunState.RUNNING,
        started_by=ops.actor_label(actor),
        started_at=utcnow(),
    )
    for name, total in count_items(session, org.id, old).items():
        run.set_total(name, total)
    session.add(run)
    session.flush()
    plan_ranges(session, run)
    return run


def start_rotation(
    session: Session,
    org: Organization,
    actor: Any,
    current_text: str,
    new_text: str,
    generated_fingerprint: str | None = None,
) -> RotationRun:
    """Start a rotation: the new key encrypts new writes from now; workers move the rest."""
    if active_run(session, org.id):
        raise RotationError(IN_PROGRESS)
    _current, new = check_keys(session, org, current_text, new_text)
    old = policy.active_key(session, org.id)
    row = store_sealed(session, org, actor, new, generated_fingerprint)
    return begin_rotation(session, org, actor, old, row, "Rotation started", {})


def store_sealed(
    session: Session, org: Organization, actor: Any, new: bytes, generated_fingerprint: str | None
) -> OrgKey:
    """Seal a pasted or generated new key as an active key (``begin_rotation`` demotes the old
    one)."""
    fp = crypto.fingerprint(crypto.key_id(new))
    origin = "generated" if generated_fingerprint == fp else "imported"
    return store_key(
        session, org.id, new, origin=origin, state="active", actor=ops.actor_label(actor)
    )


def begin_rotation(
    session: Session,
    org: Organization,
    actor: Any,
    old: OrgKey,
    row: OrgKey,
    started: str,
    extra: dict[str, Any],
) -> RotationRun:
    """The new key encrypts from now, the old one decrypts only: plan the run and audit it."""
    mark_state(old, "decrypt_only", ops.actor_label(actor))
    forget_cached_keys()
    # Every key but the new one: a cancelled run's older key and platform keys included.
    found = sources(session, org.id, row.key_id)
    keys = source_list(found, first=old.key_id)
    run = _new_run(session, org, actor, "rotation", keys, row.key_id)
    log_event(session, run, f"{started}: {old.fingerprint} → {row.fingerprint}")
    log_sources(session, run, keys[1:], found)
    unmovable = report_unmovable(session, run, found)
    emit(
        session,
        Action.ROTATION_STARTED,
        actor=actor,
        company_id=org.id,
        details={
            "run_id": str(run.id),
            "old_fingerprint": old.fingerprint,
            "new_fingerprint": row.fingerprint,
            "from_fingerprints": fingerprints(keys),
            "items": run.total,
            "unmovable": unmovable,
            **extra,
        },
    )
    return run


def start_encrypt_existing(session: Session, org: Organization, actor: Any) -> RotationRun:
    """Move every item not under the organisation's BYOK key onto it.

    That is the platform-key items from before BYOK, and also whatever an earlier BYOK key
    still holds (a cancelled run's, or one from before a Disable and re-Enable).
    """
    if active_run(session, org.id):
        raise RotationError(IN_PROGRESS)
    active = policy.active_key(session, org.id)
    if active is None or active.origin == "platform":
        raise RotationError("Enable BYOK first: existing data moves to your key.")
    return _start_move(session, org, actor, active, "encrypt_existing")


def start_move_to_active(session: Session, org: Organization, actor: Any) -> RotationRun:
    """The compliance page's "Move them to the active key": the same run and audit event,
    moving whatever is left under any other readable key to the active key, whatever its
    origin (after a Disable, that is the platform key).
    """
    if active_run(session, org.id):
        raise RotationError(IN_PROGRESS)
    active = policy.active_key(session, org.id)
    if active is None:
        raise RotationError(
            "There is no active key to move the items to: restore or enable a key first."
        )
    return _start_move(session, org, actor, active, "leftover")


def _start_move(
    session: Session, org: Organization, actor: Any, active: OrgKey, trigger: str
) -> RotationRun:
    """Start an encrypt-existing run from every readable key but the active one."""
    found = sources(session, org.id, active.key_id)
    keys = source_list(found)
    if not any(found.items(k) for k in keys):
        raise RotationError(
            "Nothing to move: every item that can be read is already under the active key."
        )
    run = _new_run(session, org, actor, "encrypt_existing", keys, active.key_id)
    log_event(session, run, f"Encryption of existing data under {active.fingerprint} started")
    log_sources(session, run, keys, found)
    unmovable = report_unmovable(session, run, found)
    emit(
        session,
        Action.ENCRYPT_EXISTING_STARTED,
        actor=actor,
        company_id=org.id,
        details={
            "run_id": str(run.id),
            "items": run.total,
            "from_fingerprints": fingerprints(keys),
            "unmovable": unmovable,
            "trigger": trigger,
        },
    )
    return run
