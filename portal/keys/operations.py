"""BYOK key operations, shared by the wizard and the CLI: same checks, messages and events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import crypto
from portal.chat.models import Attachment, Conversation, Message
from portal.events import emit
from portal.keyformat import KeyFormatError, parse_key
from portal.keys import policy
from portal.keys.errors import KeyOperationError, audits_refusals
from portal.keys.errors import audit_refusal as audit_refusal  # re-exported for callers
from portal.keys.models import OrgKey
from portal.keys.service import (
    forget_cached_keys,
    load_keys,
    mark_state,
    seal_context,
    store_key,
    unseal,
)
from portal.models import Organization

DATA_TABLES = (("messages", Message), ("attachments", Attachment), ("metadata", Conversation))


def actor_label(actor: Any) -> str:
    """Return how an actor is named on key rows (a user's email, or 'cli'/'system')."""
    return actor if isinstance(actor, str) else actor.email


def read_key(text: str, field: str = "key") -> bytes:
    """Parse a pasted key, turning format problems into a refusal tied to the field."""
    try:
        return parse_key(text or "")
    except KeyFormatError as exc:
        raise KeyOperationError(str(exc), field=field, code=exc.code) from None


def item_counts(session: Session, company_id) -> dict[str, dict[str, int]]:
    """Count stored items per key id and kind, from the key_id columns alone."""
    counts: dict[str, dict[str, int]] = {}
    for kind, model in DATA_TABLES:
        rows = session.execute(
            select(model.key_id, func.count())
            .where(model.company_id == company_id)
            .group_by(model.key_id)
        )
        for key_id, n in rows:
            counts.setdefault(key_id, {k: 0 for k, _ in DATA_TABLES})[kind] = n
    return counts


@dataclass
class KeyStatus:
    """What the status panel and ``key status`` show about an organisation's keys."""

    org: Organization
    byok_enabled: bool
    byok_required: bool
    active: OrgKey | None
    keys: list[dict[str, Any]]
    rotation_due: datetime | None
    access_revoked: bool
    rotation_overdue: bool
    # Items under platform keys written before the organisation's first own key.
    platform_items: int
    # Keys (as in ``keys``) holding items although they are neither active nor being moved
    # by a running rotation: the compliance page warns about them.
    leftover: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """Return the status as plain JSON values (no key material: fingerprints only)."""
        return {
            "organization": self.org.slug,
            "tier": self.org.tier,
            "byok_enabled": self.byok_enabled,
            "byok_required": self.byok_required,
            "active_fingerprint": self.active.fingerprint if self.active else None,
            "rotation_due": self.rotation_due.isoformat() if self.rotation_due else None,
            "access_revoked": self.access_revoked,
            "rotation_overdue": self.rotation_overdue,
            "keys": [
                {k: v for k, v in key.items() if k != "row"} | {"items": key["items"]}
                for key in self.keys
            ],
        }


def status(session: Session, org: Organization, now: datetime | None = None) -> KeyStatus:
    """Describe the organisation's keys, their states and how many items each encrypts."""
    from portal.db import utcnow

    now = now or utcnow()
    loaded = load_keys(session, org.id)
    counts = item_counts(session, org.id)
    active = next((r for r in loaded.rows if r.state == "active"), None)
    keys = []
    for row in sorted(loaded.rows, key=lambda r: r.created_at, reverse=True):
        per_kind = counts.get(row.key_id, {k: 0 for k, _ in DATA_TABLES})
        keys.append(
            {
                "row": row,
                "fingerprint": row.fingerprint,
                "state": loaded.effective_state(row),
                "origin": row.origin,
                "created_at": row.created_at.isoformat(),
                "state_changed_at": row.state_changed_at.isoformat(),
                "state_changed_by": row.state_changed_by,
                "items": sum(per_kind.values()),
                "items_by_kind": per_kind,
            }
        )
    # A revoked BYOK key leaves no active key, yet BYOK is on: nothing is read or written
    # until the admin restores it (no platform key silently takes over).
    revoked = active is None and any(
        r.origin != "platform" and r.state == "unavailable" for r in loaded.rows
    )
    enabled = revoked or (active is not None and active.origin != "platform")
    due = None
    if active is not None and enabled:
        # The clock runs from when the key began encrypting (its creation), so a revoke and
        # restore of an overdue key does not silence the warning.
        due = _aware(active.created_at) + timedelta(days=org.rotation_period_days)
    return KeyStatus(
        org=org,
        byok_enabled=enabled,
        byok_required=policy.byok_required(org),
        active=active,
        keys=keys,
        rotation_due=due,
        access_revoked=revoked,
        rotation_overdue=bool(due and due < now),
        platform_items=items_before_byok(session, org.id, loaded.rows),
        leftover=_leftover(session, org, keys),
    )


def items_before_byok(session: Session, company_id, rows: list[OrgKey]) -> int:
    """Count the platform-key items written before the organisation's first own key.

    A platform key encrypts again while BYOK is off or after the key is declared lost (the
    newest usable one is reused), so the key alone does not say when an item was written;
    its creation time does. Items written under a platform key after BYOK was first enabled
    are not "from before BYOK": they show among the items left under older keys.
    """
    platform = [r.key_id for r in rows if r.origin == "platform"]
    own = [r.created_at for r in rows if r.origin != "platform"]
    if not platform:
        return 0
    total = 0
    for _kind, model in DATA_TABLES:
        query = (
            select(func.count())
            .select_from(model)
            .where(model.company_id == company_id, model.key_id.in_(platform))
        )
        if own:
            query = query.where(model.created_at < min(own))
        total += session.scalar(query) or 0
    return total


def _leftover(session: Session, org: Organization, keys: list[dict[str, Any]]) -> list[dict]:
    """The readable keys holding items that neither encrypt nor are being moved by a run."""
    from portal.keys.runs import run_in_progress

    run = run_in_progress(session, org.id)
    moving = set(run.old_key_ids.split(",")) if run else set()
    return [
        key
        for key in keys
        if key["state"] == "decrypt_only" and key["items"] and key["row"].key_id not in moving
    ]


def _aware(moment: datetime) -> datetime:
    """Treat a naive stored time (SQLite) as UTC."""
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _require_eligible(org: Organization) -> None:
    """Refuse key management for personal (Community) accounts."""
    if not policy.byok_eligible(org):
        raise KeyOperationError(
            "BYOK is not available for Community (personal) accounts; contact sales to upgrade.",
            code="not_eligible",
        )


def _require_no_run(session: Session, org: Organization, what: str) -> None:
    """Refuse while a rotation or re-encryption run of the organisation is in progress."""
    from portal.keys.runs import run_in_progress

    if run_in_progress(session, org.id):
        raise KeyOperationError(
            f"A key rotation is in progress; {what} is not possible until it ends.",
            code="run_in_progress",
        )


def _confirm_slug(org: Organization, typed: str | None) -> None:
    """Refuse a destructive step unless the organisation's slug was typed to confirm it."""
    if (typed or "").strip() != org.slug:
        raise KeyOperationError(
            f"Type the organisation's slug ({org.slug}) to confirm.",
            field="confirm_slug",
            code="slug_mismatch",
        )


@audits_refusals("BYOK.key_generated")
def record_generated(session: Session, org: Organization, actor: Any, key: bytes) -> str:
    """Audit that a key was generated and shown once; return its fingerprint."""
    _require_eligible(org)
    fp = crypto.fingerprint(crypto.key_id(key))
    emit(session, "BYOK.key_generated", actor=actor, company_id=org.id, details={"fingerprint": fp})
    return fp


@audits_refusals("BYOK.key_test")
def test_key(session: Session, org: Organization, actor: Any, text: str) -> str:
    """Round-trip a test message through the pasted key; audit and return its fingerprint."""
    _require_eligible(org)
    key = read_key(text)
    fp = crypto.fingerprint(crypto.key_id(key))
    if not crypto.self_test(key):
        raise _self_test_failed(fp)
    emit(
        session,
        "BYOK.key_test",
        actor=actor,
        company_id=org.id,
        details={"fingerprint": fp},
    )
    return fp


def _self_test_failed(fp: str) -> KeyOperationError:
    """The refusal of a key that failed the encrypt/decrypt round trip."""
    return KeyOperationError(
        "The key failed the encrypt/decrypt test.",
        field="key",
        code="self_test_failed",
        details={"fingerprint": fp},
    )


def _known(session: Session, org: Organization, key_id_hex: str) -> OrgKey | None:
    """Return the organisation's key row with this id, in any state."""
    return session.scalar(
        select(OrgKey).where(OrgKey.company_id == org.id, OrgKey.key_id == key_id_hex)
    )


@audits_refusals("BYOK.enabled")
def enable(
    session: Session,
    org: Organization,
    actor: Any,
    text: str,
    tested_fingerprint: str,
    generated_fingerprint: str | None = None,
) -> OrgKey:
    """Make a tested key the organisation's encrypting key; new data is encrypted with it."""
    _require_eligible(org)
    _require_no_run(session, org, "enabling a key")
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
        raise _self_test_failed(fp)
    current = policy.active_key(session, org.id)
    if current is not None and current.origin != "platform":
        raise KeyOperationError(
            "BYOK is already enabled; use Rotate Key to change the key.", code="already_enabled"
        )
    if _known(session, org, crypto.key_id(key).hex()) is not None:
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
        "BYOK.enabled",
        actor=actor,
        company_id=org.id,
        details={"fingerprint": fp, "origin": origin},
    )
    return row


@audits_refusals("BYOK.disabled")
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
    _require_no_run(session, org, "disabling BYOK")
    current = policy.active_key(session, org.id)
    if current is None or current.origin == "platform":
        raise KeyOperationError("BYOK is not enabled.", code="not_enabled")
    _confirm_slug(org, confirm_slug)
    if not acknowledged:
        raise KeyOperationError(
            "Confirm that your compliance and legal teams were consulted.",
            field="acknowledge",
            code="not_acknowledged",
        )
    label = actor_label(actor)
    mark_state(current, "decrypt_only", label)
    platform = _activate_platform_key(session, org, label)
    emit(
        session,
        "BYOK.disabled",
        actor=actor,
        company_id=org.id,
        details={"fingerprint": current.fingerprint, "platform_fingerprint": platform.fingerprint},
    )
    return platform


def _activate_platform_key(session: Session, org: Organization, label: str) -> OrgKey:
    """Make a platform key the encrypting key: the newest usable one, or a fresh one."""
    rows = session.scalars(
        select(OrgKey)
        .where(
            OrgKey.company_id == org.id, OrgKey.origin == "platform", OrgKey.state == "decrypt_only"
        )
        .order_by(OrgKey.created_at.desc())
    )
    for row in rows:
        if unseal(row) is not None:
            mark_state(row, "active", label)
            return row
    return store_key(
        session, org.id, crypto.generate_key(), origin="platform", state="active", actor=label
    )


@audits_refusals("encryption_key.declared_lost")
def declare_lost(session: Session, org: Organization, actor: Any, confirm_slug: str) -> OrgKey:
    """Declare the active BYOK key lost: its sealed copy is destroyed, its items unreadable."""
    _require_no_run(session, org, "declaring the key lost")
    current = policy.active_key(session, org.id)
    if current is None or current.origin == "platform":
        raise KeyOperationError("There is no BYOK key to declare lost.", code="not_enabled")
    _confirm_slug(org, confirm_slug)
    label = actor_label(actor)
    current.sealed = None
    mark_state(current, "lost", label)
    details = {"fingerprint": current.fingerprint}
    if not policy.byok_required(org):
        details["platform_fingerprint"] = _activate_platform_key(session, org, label).fingerprint
    emit(session, "encryption_key.declared_lost", actor=actor, company_id=org.id, details=details)
    return current


@audits_refusals("encryption_key.restore")
def restore(session: Session, org: Organization, actor: Any, text: str) -> OrgKey:
    """Take a key back from the admin's backup; accepted only if the organisation had it."""
    key = read_key(text)
    key_id_hex = crypto.key_id(key).hex()
    row = _known(session, org, key_id_hex)
    fp = crypto.fingerprint(crypto.key_id(key))
    loaded = load_keys(session, org.id)
    if row is None or row.origin == "platform":
        raise KeyOperationError(
            f"No key of your organisation has fingerprint {fp}; check you pasted the right backup.",
            field="key",
            code="unknown_key",
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
        "encryption_key.restored",
        actor=actor,
        company_id=org.id,
        details={"fingerprint": fp, "state": row.state},
    )
    return row


@audits_refusals("encryption_key.revoked")
def revoke(session: Session, org: Organization, actor: Any, confirm_slug: str) -> OrgKey:
    """Kill switch: destroy the active BYOK key's sealed copy until the admin restores it."""
    _require_no_run(session, org, "revoking the key")
    current = policy.active_key(session, org.id)
    if current is None or current.origin == "platform":
        raise KeyOperationError("There is no BYOK key to revoke.", code="not_enabled")
    _confirm_slug(org, confirm_slug)
    current.sealed = None
    mark_state(current, "unavailable", actor_label(actor))
    emit(
        session,
        "encryption_key.revoked",
        actor=actor,
        company_id=org.id,
        details={"fingerprint": current.fingerprint},
    )
    return current
