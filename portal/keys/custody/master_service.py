"""The installation master key held in Transit or an HSM (MASTER_KEY_PROVIDER).

With ``MASTER_KEY_PROVIDER=vault-transit`` or ``pkcs11`` the master key is the key that
``MASTER_KEY_REF`` names in that service (a Transit key name or a PKCS#11 label), and it never
leaves it. An organisation key is sealed by having the service wrap it, with the seal context
(organisation and key id) bound in; the row's ``custody`` says ``master-key:vault-transit`` or
``master-key:pkcs11``. Calls go through the service's started ``KeyServiceClient`` (looked up
per call, so the cache, breaker and ``/healthz`` are shared with organisations' own keys).
Wrap contexts carry a ``purpose`` that external data keys never have, so a sealed key cannot
pass for an organisation's wrapped data key even if both used the same key.

Start-up in that mode reads and creates no master key file for sealing. A file (or
``BYOK_MASTER_KEY``) master key that is still present starts the file backend beside it, so
keys sealed before the move stay readable until ``byok-portal custody migrate`` has re-sealed
them (portal/keys/custody_migrate.py); then the operator removes the file. A stopped service
does not stop start-up: calls fail when made, and keys report ``key_service_unreachable``.

The audit signing key (it signs audit chain heads and checkpoints) used to be derived from the
master key's bytes, which a service-held key does not give. Here it is 32 random bytes wrapped
by the master key service and kept in ``BYOK_HOME/audit-signing.key.wrapped`` (mode 0600),
unwrapped once at start-up. While a file master key is loaded the key is still derived from it,
and ``custody migrate`` wraps exactly that derived key into the file, so chains signed before
the move still verify after the key file is gone. ``byok-portal init`` writes a random one on a
fresh installation. If it cannot be unwrapped at start-up (service down), the process signs
nothing, as with no master key before; the reason is logged and shown by ``custody status``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from flask import current_app

from portal.crypto import KEY_BYTES
from portal.keys.custody.audit_key import AuditKeySource, MasterKeyAuditSource
from portal.keys.custody.base import CustodyError, KeyServiceUnreachable, Startup
from portal.keys.custody.client import KeyServiceClient
from portal.keys.custody.keyservice import KeyRef

PROVIDERS = ("vault-transit", "pkcs11")
VAULT_TRANSIT = "master-key:vault-transit"
PKCS11 = "master-key:pkcs11"
NAMES = {"vault-transit": VAULT_TRANSIT, "pkcs11": PKCS11}
AUDIT_KEY_FILE = "audit-signing.key.wrapped"
AUDIT_KEY_CONTEXT = {"purpose": "audit-signing-key"}

T = TypeVar("T")
log = logging.getLogger(__name__)


def master_ref(config: Mapping[str, Any]) -> KeyRef | None:
    """The installation master key in its service, or None when it lives in a file."""
    provider = config.get("MASTER_KEY_PROVIDER") or "file"
    ref = config.get("MASTER_KEY_REF")
    return KeyRef(provider, ref) if provider in PROVIDERS and ref else None


def sealed_key_context(context: bytes) -> dict[str, str]:
    """The wrap context of a sealed organisation key (its seal context is ASCII)."""
    return {"purpose": "sealed-key", "seal_context": context.decode("ascii")}


def _explained(exc: CustodyError, ref: KeyRef) -> CustodyError:
    """The same kind of failure, saying it was the installation master key (by reference)."""
    text = f"the installation master key {ref} could not be used: {exc}"
    if isinstance(exc, KeyServiceUnreachable):
        return KeyServiceUnreachable(text, exc.retry_after)
    return type(exc)(text)


def _call(client: KeyServiceClient | None, ref: KeyRef, call: Callable[[KeyServiceClient], T]) -> T:
    """Run one call on the master key's service, naming the master key in any failure."""
    if client is None:
        raise CustodyError(
            f"the master key service {ref.provider} is not configured on this installation "
            "(MASTER_KEY_PROVIDER needs its connection settings; see docs/operations.md)"
        )
    try:
        return call(client)
    except CustodyError as exc:
        raise _explained(exc, ref) from None


def running_client(provider: str) -> KeyServiceClient | None:
    """The started client of a provider in the current app, or None."""
    return current_app.extensions.get("key_services", {}).get(provider)


def not_running(provider: str) -> str | None:
    """Why the configured provider did not start (say, its extra is missing), or None."""
    return current_app.extensions.get("key_service_problems", {}).get(provider)


class MasterServiceCustody:
    """Seals organisation keys by having the master key in Transit or an HSM wrap them."""

    def __init__(self, ref: KeyRef) -> None:
        """Seal under ref's key; the service is looked up when a call is made."""
        self.name = NAMES[ref.provider]
        self.ref = ref

    def __repr__(self) -> str:
        """Name the master key by reference (never a secret)."""
        return f"<MasterServiceCustody {self.ref}>"

    def _client(self) -> KeyServiceClient | None:
        """The started client, or CustodyError when the provider is configured but failed."""
        client = running_client(self.ref.provider)
        problem = not_running(self.ref.provider)
        if client is None and problem:
            raise CustodyError(
                f"the master key service {self.ref.provider} did not start: {problem}"
            )
        return client

    def seal(self, key: bytes, context: bytes) -> bytes:
        """Return key wrapped under the master key, bound to context."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"only {KEY_BYTES}-byte keys are sealed, got {len(key)}")
        wrap_context = sealed_key_context(context)
        return _call(self._client(), self.ref, lambda c: c.wrap(self.ref, bytes(key), wrap_context))

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """Return the key sealed with this context (from the client's cache while fresh)."""
        wrap_context = sealed_key_context(context)
        return _call(
            self._client(), self.ref, lambda c: c.unwrap(self.ref, bytes(sealed), wrap_context)
        )

    def check(self) -> None:
        """Wrap and really unwrap a throwaway key (no cache): prove both calls are allowed."""
        probe = secrets.token_bytes(KEY_BYTES)
        context = {"purpose": "check"}
        back = _call(self._client(), self.ref, lambda c: c.round_trip(self.ref, probe, context))
        if back != probe:
            raise CustodyError(f"the master key {self.ref} did not give back what it wrapped")


def _starter(provider: str) -> Callable[[Startup], MasterServiceCustody | None]:
    """The factory of one provider's backend: it runs when MASTER_KEY_PROVIDER names it."""

    def start(startup: Startup) -> MasterServiceCustody | None:
        """Start when the master key lives in this provider (no call is made yet)."""
        ref = master_ref(startup.config)
        return MasterServiceCustody(ref) if ref is not None and ref.provider == provider else None

    return start


start_vault_transit = _starter("vault-transit")
start_pkcs11 = _starter("pkcs11")


# -- the audit signing key --------------------------------------------------------------------


class WrappedAuditSource:
    """The audit signing key kept wrapped by the master key service in BYOK_HOME."""

    name = "master-key-service"

    def __init__(self, key: bytes | None, problem: str | None = None) -> None:
        """Hold the unwrapped key, or why there is none."""
        self._key = key
        self.problem = problem

    def __repr__(self) -> str:
        """Say whether a key is loaded, never the key."""
        return f"<WrappedAuditSource loaded={self._key is not None}>"

    def signing_key(self) -> bytes | None:
        """Return the audit signing key, or None when it could not be unwrapped."""
        return self._key


def audit_key_path(config: Mapping[str, Any]) -> Path:
    """Where the wrapped audit signing key is kept."""
    return Path(config["BYOK_HOME"]) / AUDIT_KEY_FILE


def store_audit_key(config: Mapping[str, Any], client: KeyServiceClient | None, key: bytes) -> Path:
    """Wrap key under the master key and write it to the audit key file (0600, atomically)."""
    ref = master_ref(config)
    if ref is None:
        raise CustodyError("the master key is not in a key service (MASTER_KEY_PROVIDER=file)")
    wrapped = _call(client, ref, lambda c: c.wrap(ref, key, AUDIT_KEY_CONTEXT))
    record = {"master_key": str(ref), "wrapped": base64.b64encode(wrapped).decode("ascii")}
    path = audit_key_path(config)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(json.dumps(record) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CustodyError(f"cannot write {path}: {exc.strerror}") from None
    return path


def _load_audit_key(config: Mapping[str, Any], client: KeyServiceClient | None) -> bytes:
    """Unwrap the audit key file, or raise CustodyError saying why not."""
    ref = master_ref(config)
    path = audit_key_path(config)
    try:
        record = json.loads(path.read_text(encoding="ascii"))
        wrapped = base64.b64decode(record["wrapped"], validate=True)
        stored_under = record["master_key"]
    except FileNotFoundError:
        raise CustodyError(f"{path} does not exist: run `byok-portal init`") from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        raise CustodyError(f"{path} is not a wrapped audit signing key") from None
    if stored_under != str(ref):
        raise CustodyError(f"{path} was wrapped under {stored_under}, not under {ref}")
    return _call(client, ref, lambda c: c.unwrap(ref, wrapped, AUDIT_KEY_CONTEXT))


def audit_source(
    config: Mapping[str, Any],
    services: Mapping[str, KeyServiceClient],
    file_master: bytes | None,
    create: bool = False,
) -> AuditKeySource:
    """Choose where the audit signing key comes from (see the module docstring)."""
    ref = master_ref(config)
    if ref is None or file_master is not None:
        return MasterKeyAuditSource(file_master)
    client = services.get(ref.provider)
    if create and not audit_key_path(config).exists():
        try:
            store_audit_key(config, client, secrets.token_bytes(KEY_BYTES))
        except CustodyError as exc:
            log.error("audit signing key not created: %s", exc)
    try:
        return WrappedAuditSource(_load_audit_key(config, client))
    except CustodyError as exc:
        log.error("audit signing key not loaded (audit heads are not signed): %s", exc)
        return WrappedAuditSource(None, str(exc))


def source_label(config: Mapping[str, Any], file_master: bytes | None, file_source: str) -> str:
    """Say where the master key lives, for ``byok-portal init`` and ``custody status``."""
    ref = master_ref(config)
    if ref is None:
        return file_source
    if file_master is None:
        return f"{ref} (no key file is used)"
    return f"{ref}; the file master key ({file_source}) still opens keys sealed before the move"
