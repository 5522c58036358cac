"""What an organisation's keys look like: states, items per key and kind, warnings.

Counts iterate the registry of encrypted kinds (portal/chat/kinds.py), so a new kind is
counted here, on the status panel and in ``key status``, without touching this module.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from portal.chat import counts
from portal.chat.kinds import Kind, all_kinds
from portal.db import utcnow
from portal.keys import policy
from portal.keys.models import OrgKey
from portal.keys.runs import run_in_progress
from portal.keys.service import load_keys
from portal.keys.wrapped import service_state
from portal.models import Organization


def no_items() -> dict[str, int]:
    """Zero items of every registered kind, by kind name."""
    return {kind.name: 0 for kind in all_kinds()}


def item_counts(session: Session, company_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """Stored items per key id and kind, from the counters every write keeps (no scan)."""
    return counts.item_counts(session, company_id)


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
    # The registered kinds, in order: one column each where counts per kind are shown.
    kinds: tuple[Kind, ...] = field(default_factory=all_kinds)
    # Where the active key's key-encryption key lives: "sealed" (the installation's master
    # key) or the provider of the customer's key service, its key reference, and what that
    # service answered just now (portal/keys/wrapped.py's service_state).
    custody: str = "sealed"
    key_ref: str | None = None
    key_service: dict[str, Any] | None = None
    # The organisation's unfinished run, if any (the page links to it).
    run: Any | None = None

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
            "custody": self.custody,
            "key_ref": self.key_ref,
            "key_service": self.key_service["state"] if self.key_service else None,
            "key_service_detail": self.key_service,
            "keys": [
                {k: v for k, v in key.items() if k != "row"} | {"items": key["items"]}
                for key in self.keys
            ],
        }


def status(session: Session, org: Organization, now: datetime | None = None) -> KeyStatus:
    """Describe the organisation's keys, their states and how many items each encrypts."""
    now = now or utcnow()
    loaded = load_keys(session, org.id)
    counts = item_counts(session, org.id)
    active = next((r for r in loaded.rows if r.state == "active"), None)
    keys = []
    for row in sorted(loaded.rows, key=lambda r: r.created_at, reverse=True):
        per_kind = counts.get(row.key_id) or no_items()
        keys.append(
            {
                "row": row,
                "fingerprint": row.fingerprint,
                "state": loaded.effective_state(row),
                "origin": row.origin,
                "custody": row.custody if row.external else "sealed",
                "key_ref": row.key_ref,
                "reason": loaded.code(row),
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
    external = active if active is not None and active.external else None
    run = run_in_progress(session, org.id)
    return KeyStatus(
        custody=external.custody if external else "sealed",
        key_ref=external.key_ref if external else None,
        key_service=service_state(external) if external else None,
        org=org,
        byok_enabled=enabled,
        byok_required=policy.byok_required(org),
        active=active,
        keys=keys,
        rotation_due=due,
        access_revoked=revoked,
        rotation_overdue=bool(due and due < now),
        platform_items=items_before_byok(session, org.id),
        leftover=_leftover(keys, run),
        run=run,
    )


def items_before_byok(session: Session, company_id: uuid.UUID) -> int:
    """Count the platform-key items written before the organisation's first own key.

    A platform key encrypts again while BYOK is off or after the key is declared lost (the
    newest usable one is reused), so the key alone does not say when an item was written;
    its creation time does, and the counters count those items apart (portal/keys/counting.py).
    Items written under a platform key after BYOK was first enabled are not "from before
    BYOK": they show among the items left under older keys.
    """
    return counts.early_items(session, company_id)


def _leftover(keys: list[dict[str, Any]], run: Any | None) -> list[dict]:
    """The readable keys holding items that neither encrypt nor are being moved by a run."""
    moving = set(run.old_key_ids.split(",")) if run else set()
    return [
        key
        for key in keys
        if key["state"] == "decrypt_only" and key["items"] and key["row"].key_id not in moving
    ]


def _aware(moment: datetime) -> datetime:
    """Treat a naive stored time (SQLite) as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
