"""Sealing keys, loading an organisation's keyring, and platform-managed keys."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from flask import Flask, current_app, g, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import crypto
from portal.custody import CustodyError, KeyCustody, MasterKeyCustody, load_master_key
from portal.db import utcnow
from portal.keys.models import OrgKey
from portal.models import Organization

log = logging.getLogger(__name__)
USABLE_STATES = ("active", "decrypt_only")


class KeyUnavailable(RuntimeError):
    """The organisation's encrypting key cannot be used right now; the message says why."""


def init_app(app: Flask, create_master_key: bool = False) -> None:
    """Load the installation master key (if any) and set up custody and the audit key."""
    from portal.custody import derive_subkey

    try:
        master = load_master_key(
            app.config.get("BYOK_MASTER_KEY"),
            app.config["BYOK_MASTER_KEY_FILE"],
            create=create_master_key,
        )
    except CustodyError as exc:
        log.error("master key not loaded: %s", exc)
        master = None
    app.extensions["custody"] = MasterKeyCustody(master) if master else None
    app.extensions["audit_signing_key"] = derive_subkey(master, b"audit-chain") if master else None
    source = (
        "BYOK_MASTER_KEY"
        if app.config.get("BYOK_MASTER_KEY")
        else (app.config["BYOK_MASTER_KEY_FILE"])
    )
    app.extensions["master_key_source"] = source if master else "missing (keys are unavailable)"


def custody() -> KeyCustody | None:
    """Return the current app's custody backend, or None when no master key is loaded."""
    return current_app.extensions.get("custody")


def seal_context(company_id: uuid.UUID, key_id_hex: str) -> bytes:
    """Bind a sealed key to its organisation and key id, so it cannot be moved."""
    return f"byok-sealed-key:{company_id}:{key_id_hex}".encode()


def store_key(
    session: Session,
    org_id: uuid.UUID,
    key: bytes,
    *,
    origin: str,
    state: str,
    actor: str,
) -> OrgKey:
    """Seal a key and add it to the organisation's keys (the key itself is never stored)."""
    backend = custody()
    if backend is None:
        raise KeyUnavailable("no master key is loaded: run `byok-portal init`")
    key_id_hex = crypto.key_id(key).hex()
    row = OrgKey(
        company_id=org_id,
        key_id=key_id_hex,
        state=state,
        origin=origin,
        sealed=backend.seal(key, seal_context(org_id, key_id_hex)),
        custody=backend.name,
        created_by=actor,
        state_changed_by=actor,
    )
    session.add(row)
    session.flush()
    return row


def create_platform_key(session: Session, org: Organization) -> OrgKey:
    """Give a new organisation its platform-managed key, which encrypts until BYOK is on."""
    return store_key(
        session, org.id, crypto.generate_key(), origin="platform", state="active", actor="system"
    )


@dataclass
class LoadedKeys:
    """An organisation's keyring plus what could not be unsealed."""

    keyring: crypto.Keyring
    rows: list[OrgKey]
    unavailable: set[str]

    def effective_state(self, row: OrgKey) -> str:
        """Return a key's state as it is now: 'unavailable' when it cannot be unsealed."""
        if row.state in USABLE_STATES and row.key_id in self.unavailable:
            return "unavailable"
        return row.state


def unseal(row: OrgKey) -> bytes | None:
    """Unseal one key row, or return None when that is impossible (no/wrong master key)."""
    backend = custody()
    if backend is None or row.sealed is None:
        return None
    try:
        key = backend.unseal(row.sealed, seal_context(row.company_id, row.key_id))
    except CustodyError:
        return None
    return key if crypto.key_id(key).hex() == row.key_id else None


def load_keys(session: Session, company_id: uuid.UUID) -> LoadedKeys:
    """Build the organisation's keyring from its usable keys (cached per app context)."""
    cache = g.setdefault("keyrings", {}) if has_app_context() else {}
    if company_id in cache:
        return cache[company_id]
    rows = list(
        session.scalars(
            select(OrgKey).where(OrgKey.company_id == company_id).order_by(OrgKey.created_at)
        )
    )
    encrypting: bytes | None = None
    decrypt_only: list[bytes] = []
    missing: set[str] = set()
    for row in rows:
        if row.state not in USABLE_STATES and row.state != "unavailable":
            continue
        key = unseal(row) if row.state != "unavailable" else None
        if key is None:
            missing.add(row.key_id)
        elif row.state == "active":
            encrypting = key
        else:
            decrypt_only.append(key)
    # Keys that are lost or retired are known but unusable: say "unavailable", not "unknown".
    missing |= {r.key_id for r in rows if r.state in ("lost", "retired")}
    ring = crypto.Keyring(
        encrypting=encrypting,
        decrypt_only=decrypt_only,
        unavailable=[bytes.fromhex(k) for k in missing],
    )
    loaded = LoadedKeys(ring, rows, missing)
    cache[company_id] = loaded
    return loaded


def forget_cached_keys() -> None:
    """Drop keyrings cached in this app context (after a key changes state)."""
    if has_app_context():
        g.pop("keyrings", None)


def encrypting_keyring(session: Session, company_id: uuid.UUID) -> crypto.Keyring:
    """Return a keyring that can encrypt new data for the organisation, or raise."""
    loaded = load_keys(session, company_id)
    if loaded.keyring.encrypting_key_id is None:
        raise KeyUnavailable(
            "the organisation's encryption key is unavailable: an admin must restore it"
        )
    return loaded.keyring


def mark_state(row: OrgKey, state: str, actor: str) -> None:
    """Move a key to a new state, recording who and when."""
    row.state = state
    row.state_changed_at = utcnow()
    row.state_changed_by = actor
    forget_cached_keys()
