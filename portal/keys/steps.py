"""The steps key operations share: reading a pasted key, refusing, finding keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import crypto
from portal.keyformat import KeyFormatError, parse_key
from portal.keys import policy
from portal.keys.errors import KeyOperationError
from portal.keys.models import OrgKey
from portal.keys.runs import run_in_progress
from portal.keys.service import mark_state, store_key, unseal
from portal.models import Organization


def actor_label(actor: Any) -> str:
    """Return how an actor is named on key rows (a user's email, or 'cli'/'system')."""
    return actor if isinstance(actor, str) else actor.email


def read_key(text: str, field: str = "key") -> bytes:
    """Parse a pasted key, turning format problems into a refusal tied to the field."""
    try:
        return parse_key(text or "")
    except KeyFormatError as exc:
        raise KeyOperationError(str(exc), field=field, code=exc.code) from None


def require_eligible(org: Organization) -> None:
    """Refuse key management for personal (Community) accounts."""
    if not policy.byok_eligible(org):
        raise KeyOperationError(
            "BYOK is not available for Community (personal) accounts; contact sales to upgrade.",
            code="not_eligible",
        )


def require_no_run(session: Session, org: Organization, what: str) -> None:
    """Refuse while a rotation or re-encryption run of the organisation is in progress."""
    if run_in_progress(session, org.id):
        raise KeyOperationError(
            f"A key rotation is in progress; {what} is not possible until it ends.",
            code="run_in_progress",
        )


def confirm_slug_typed(org: Organization, typed: str | None) -> None:
    """Refuse a destructive step unless the organisation's slug was typed to confirm it."""
    if (typed or "").strip() != org.slug:
        raise KeyOperationError(
            f"Type the organisation's slug ({org.slug}) to confirm.",
            field="confirm_slug",
            code="slug_mismatch",
        )


def self_test_failed(fp: str) -> KeyOperationError:
    """The refusal of a key that failed the encrypt/decrypt round trip."""
    return KeyOperationError(
        "The key failed the encrypt/decrypt test.",
        field="key",
        code="self_test_failed",
        details={"fingerprint": fp},
    )


def known_key(session: Session, org: Organization, key_id_hex: str) -> OrgKey | None:
    """Return the organisation's key row with this id, in any state."""
    return session.scalar(
        select(OrgKey).where(OrgKey.company_id == org.id, OrgKey.key_id == key_id_hex)
    )


def activate_platform_key(session: Session, org: Organization, label: str) -> OrgKey:
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
