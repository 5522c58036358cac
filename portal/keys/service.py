"""Sealing keys, loading an organisation's keyring, and platform-managed keys."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from flask import Flask, g, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import crypto
from portal.config import ConfigError
from portal.db import utcnow
from portal.keys import custody as registry
from portal.keys.custody import CustodyError, KeyCustody, master_service
from portal.keys.custody.master_key import load_configured
from portal.keys.keyring_cache import forget, keygen_names
from portal.keys.models import OrgKey
from portal.keys.wrapped import unwrap_row
from portal.models import Organization

log = logging.getLogger(__name__)
USABLE_STATES = ("active", "decrypt_only")


class KeyUnavailable(RuntimeError):
    """The organisation's encrypting key cannot be used right now; the message says why.

    ``code`` is ``key_unavailable``, or for a key in the customer's key service
    ``key_access_revoked`` (it said no) or ``key_service_unreachable`` (it did not answer,
    try again after ``retry_after`` seconds).
    """

    def __init__(self, message: str, code: str = "key_unavailable", retry_after: int = 0):
        """Say why, with the reason code and, when unreachable, when to try again."""
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


def init_app(app: Flask, create_master_key: bool = False) -> None:
    """Load the master key, start the custody backends, and set up the audit signing key."""
    name = app.config.get("KEY_CUSTODY") or registry.DEFAULT
    in_service = master_service.master_ref(app.config)
    if in_service is not None and name == registry.DEFAULT:
        # The master key lives in Transit or an HSM: new keys are sealed through it.
        name = master_service.NAMES[in_service.provider]
    try:
        registry.get(name)
    except CustodyError as exc:
        raise ConfigError(f"KEY_CUSTODY: {exc}") from None
    # No key file is made then; one still present opens keys sealed before `custody migrate`.
    create_file = create_master_key and in_service is None
    master, source = load_configured(app.config, create=create_file)
    backends = registry.start(registry.Startup(app.config, master))
    app.extensions["custody_backends"] = backends
    app.extensions["custody"] = backends.get(name)
    services, problems = registry.start_services(app.config)
    app.extensions["key_services"] = services
    app.extensions["key_service_problems"] = problems
    audit_source = master_service.audit_source(app.config, services, master, create_master_key)
    app.extensions["audit_key_source"] = audit_source
    app.extensions["audit_signing_key"] = audit_source.signing_key()
    app.extensions["master_key_source"] = master_service.source_label(app.config, master, source)


def custody() -> KeyCustody | None:
    """Return the backend that seals new keys (KEY_CUSTODY), or None when it is not running."""
    return registry.configured()


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
        sealed=_seal(backend, key, seal_context(org_id, key_id_hex)),
        custody=backend.name,
        created_by=actor,
        state_changed_by=actor,
    )
    session.add(row)
    session.flush()
    return row


def _seal(backend: KeyCustody, key: bytes, context: bytes) -> bytes:
    """Seal with the backend; a master key service that refuses or is down is KeyUnavailable."""
    try:
        return backend.seal(key, context)
    except CustodyError as exc:
        raise KeyUnavailable(
            f"the key could not be sealed: {exc}", exc.code, getattr(exc, "retry_after", 0)
        ) from None


def create_platform_key(session: Session, org: Organization) -> OrgKey:
    """Give a new organisation its platform-managed key, which encrypts until BYOK is on."""
    return store_key(
        session, org.id, crypto.generate_key(), origin="platform", state="active", actor="system"
    )


@dataclass
class LoadedKeys:
    """An organisation's keyring plus what could not be unsealed, and why."""

    keyring: crypto.Keyring
    rows: list[OrgKey]
    unavailable: set[str]
    reasons: dict[str, str] = field(default_factory=dict)
    # Per unusable key id: the code items under it report (crypto.DECRYPTION_FAILURES).
    codes: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before asking an unreachable key service again (0: not applicable).
    retry_after: int = 0

    def code(self, row: OrgKey) -> str | None:
        """The reason code of a key that could not be used (key_access_revoked, ...)."""
        return self.codes.get(row.key_id)

    def effective_state(self, row: OrgKey) -> str:
        """Return a key's state as it is now: 'unavailable' when it cannot be unsealed."""
        if row.state in USABLE_STATES and row.key_id in self.unavailable:
            return "unavailable"
        return row.state

    def reason(self, row: OrgKey) -> str | None:
        """Say why a usable-looking key could not be unsealed (None when it was, or not tried)."""
        return self.reasons.get(row.key_id)


def unseal(row: OrgKey) -> bytes | None:
    """Unseal one key row, or return None when that is impossible (no/wrong master key)."""
    return unseal_or_reason(row)[0]


def unseal_or_reason(row: OrgKey) -> tuple[bytes | None, str | None]:
    """Unseal a key row with the backend it names; return (key, None) or (None, why not)."""
    key, why, _code = unseal_with_code(row)
    return key, why


def unseal_with_code(row: OrgKey) -> tuple[bytes | None, str | None, CustodyError | None]:
    """Unseal (or unwrap, for an external key) a key row; on failure say why, with the error."""
    if row.sealed is None:
        return None, "no sealed copy is stored", None
    if row.external:
        try:
            key = unwrap_row(row)
        except CustodyError as exc:
            return None, str(exc), exc
        if crypto.key_id(key).hex() != row.key_id:
            return None, "the unwrapped data key does not match its key id", None
        return key, None, None
    backend = registry.backend_for(row)
    if backend is None:
        return None, _missing_backend(row.custody), None
    try:
        key = backend.unseal(row.sealed, seal_context(row.company_id, row.key_id))
    except CustodyError as exc:
        return None, str(exc), exc
    if crypto.key_id(key).hex() != row.key_id:
        return None, "the unsealed key does not match its key id", None
    return key, None, None


_warned_backends: set[str | None] = set()


def _missing_backend(name: str | None) -> str:
    """Explain a key whose custody backend is not running, logging unknown names once."""
    if name == registry.DEFAULT:
        return "no master key is loaded"
    if name in registry.names():
        return f"its key custody backend {name!r} did not start"
    reason = (
        f"it was sealed by key custody backend {name!r}, which this installation does not have "
        f"(known: {', '.join(registry.names())})"
    )
    if name not in _warned_backends:
        _warned_backends.add(name)
        log.warning("keys are unavailable: %s", reason)
    return reason


def load_keys(session: Session, company_id: uuid.UUID) -> LoadedKeys:
    """Build the organisation's keyring from its usable keys (cached per app context)."""
    cache = g.setdefault("keyrings", {}) if has_app_context() else {}
    if company_id not in cache:
        cache[company_id] = read_keys(session, company_id)
    return cache[company_id]


def read_keys(session: Session, company_id: uuid.UUID) -> LoadedKeys:
    """Read and unseal the organisation's keys now (no cache: the data path keeps its own)."""
    rows = list(
        session.scalars(
            select(OrgKey).where(OrgKey.company_id == company_id).order_by(OrgKey.created_at)
        )
    )
    encrypting: bytes | None = None
    decrypt_only: list[bytes] = []
    missing: set[str] = set()
    reasons: dict[str, str] = {}
    codes: dict[str, str] = {}
    retry_after = 0
    for row in rows:
        if row.state not in USABLE_STATES and row.state != "unavailable":
            continue
        key, why, exc = unseal_with_code(row) if row.state != "unavailable" else (None, None, None)
        if key is None:
            missing.add(row.key_id)
            if why:
                reasons[row.key_id] = why
            if exc is not None:
                codes[row.key_id] = exc.code
                retry_after = max(retry_after, getattr(exc, "retry_after", 0))
        elif row.state == "active":
            encrypting = key
        else:
            decrypt_only.append(key)
    # Keys that are lost or retired are known but unusable: say "unavailable", not "unknown".
    missing |= {r.key_id for r in rows if r.state in ("lost", "retired")}
    ring = crypto.Keyring(
        encrypting=encrypting,
        decrypt_only=decrypt_only,
        unavailable={bytes.fromhex(k): codes.get(k, "key_unavailable") for k in missing},
    )
    return LoadedKeys(ring, rows, missing, reasons, codes, retry_after)


def forget_cached_keys(company_id: uuid.UUID | None = None) -> None:
    """Drop keyrings cached in this app context and process (of one organisation, or all) and
    bump their generation, so other processes drop theirs (the commit bumps again)."""
    if has_app_context():
        g.pop("keyrings", None)
        g.pop("data_keys", None)
    forget(keygen_names(company_id)[:1] if company_id is not None else None)


def encrypting_keyring(session: Session, company_id: uuid.UUID) -> crypto.Keyring:
    """Return a keyring that can encrypt new data for the organisation, or raise."""
    return check_encrypting(load_keys(session, company_id))


def check_encrypting(loaded: LoadedKeys) -> crypto.Keyring:
    """Return the loaded keyring if it can encrypt, else raise KeyUnavailable saying why."""
    if loaded.keyring.encrypting_key_id is None:
        active = next((r for r in loaded.rows if r.state == "active"), None)
        code = loaded.code(active) if active is not None else None
        # An organisation's own key service, or the one holding the installation master key.
        where = (active.key_ref if active is not None else None) or "the installation master key"
        if code == "key_access_revoked":
            raise KeyUnavailable(
                f"the key service refused access to the organisation's key ({where}); nothing "
                "was stored. Access comes back once the key service allows it again.",
                code,
            )
        if code == "key_service_unreachable":
            raise KeyUnavailable(
                f"the key service holding the organisation's key did not answer ({where}); "
                f"nothing was stored. Try again in {loaded.retry_after} s.",
                code,
                loaded.retry_after,
            )
        raise KeyUnavailable(
            "the organisation's encryption key is unavailable: an admin must restore it"
        )
    return loaded.keyring


def mark_state(row: OrgKey, state: str, actor: str) -> None:
    """Move a key to a new state, recording who and when."""
    row.state = state
    row.state_changed_at = utcnow()
    row.state_changed_by = actor
    forget_cached_keys(row.company_id)
