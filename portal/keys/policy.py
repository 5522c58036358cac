"""Who must, may or may not bring their own key, per deployment mode and tier."""

from __future__ import annotations

import uuid

from flask import current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.keys.models import OrgKey
from portal.models import Organization


class ByokRequired(RuntimeError):
    """Tenant data cannot be stored before the organisation enables its own key."""


def deployment_mode() -> str:
    """Return the installation's deployment mode (``shared`` outside an app context)."""
    return current_app.config["BYOK_DEPLOYMENT"] if has_app_context() else "shared"


def byok_eligible(org: Organization) -> bool:
    """Tell whether the organisation may manage its own key (everyone but personal accounts)."""
    return org.tier != "community" or deployment_mode() != "shared"


def byok_required(org: Organization) -> bool:
    """Tell whether BYOK is mandatory: isolated deployments and dedicated/on-prem tiers."""
    return deployment_mode() in ("dedicated", "on_prem") or org.tier in ("dedicated", "on_prem")


def isolated(org: Organization) -> bool:
    """Tell whether the organisation runs isolated ("Dedicated") rather than shared."""
    return byok_required(org)


def active_key(session: Session, company_id: uuid.UUID) -> OrgKey | None:
    """Return the organisation's encrypting key row, if it has one."""
    return session.scalar(
        select(OrgKey).where(OrgKey.company_id == company_id, OrgKey.state == "active")
    )


def byok_enabled(session: Session, company_id: uuid.UUID) -> bool:
    """Tell whether the organisation's own key (not a platform key) encrypts new data."""
    key = active_key(session, company_id)
    return key is not None and key.origin != "platform"


def check_can_store(session: Session, org: Organization) -> None:
    """Refuse to store tenant data where BYOK is required but not yet enabled."""
    if byok_required(org) and not byok_enabled(session, org.id):
        raise ByokRequired(_refusal(session, org.id))


def _refusal(session: Session, company_id: uuid.UUID) -> str:
    """Say why nothing can be stored: a lost or revoked key needs restoring, not a first key."""
    gone = session.scalar(
        select(OrgKey)
        .where(
            OrgKey.company_id == company_id,
            OrgKey.origin != "platform",
            OrgKey.state.in_(("lost", "unavailable")),
        )
        .order_by(OrgKey.state_changed_at.desc())
        .limit(1)
    )
    if gone is None:
        return "this organisation must enable its own encryption key (BYOK) before data is stored"
    what = "was declared lost" if gone.state == "lost" else "is unavailable (access revoked)"
    return (
        f"this organisation's encryption key {gone.fingerprint} {what}; nothing can be stored "
        "until an admin restores it: Restore key on the Compliance Policies page, with the same "
        "key from your backup (or enables a new key there)"
    )
