"""Vault / OpenBao Transit: the customer's Transit key wraps each organisation's data key.

The organisation is bound into every wrap: as ``context`` for a ``derived=true`` key, as
``associated_data`` for an ordinary AEAD key (Transit silently ignores ``context`` there).
Transit ``rewrap`` ignores associated data, so an ordinary key's same-key rewrap is a decrypt
and an encrypt. The stored wrapped key is the Transit ciphertext (``vault:v3:...``) in ASCII.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.keyservice import KeyInfo, KeyRef, WrapContext

NAME = "vault-transit"
T = TypeVar("T")
_REF = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Types whose ciphertext authenticates associated data; OpenBao refuses it for RSA keys.
_AEAD_TYPES = frozenset({"aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "xchacha20-poly1305"})
# A key's settings are read at most this often; "derived" never changes after creation.
_CONFIG_SECONDS = 60.0


def context_bytes(context: WrapContext) -> bytes:
    """The bytes a context binds: sorted, each part quoted so no two contexts collide."""
    parts = [f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in sorted(context.items())]
    return ("byok-portal:" + ";".join(parts)).encode()


def _b64(data: bytes) -> str:
    """Base64 text, as Transit takes plaintexts, contexts and associated data."""
    return base64.b64encode(bytes(data)).decode("ascii")


@dataclass(frozen=True)
class _KeyConfig:
    """What the portal needs from ``<mount>/keys/<name>``."""

    type: str
    derived: bool
    latest_version: int
    min_decryption_version: int

    def binding(self, context: WrapContext) -> dict[str, str]:
        """The request field that binds the context for this kind of key."""
        field = "context" if self.derived else "associated_data"
        return {field: _b64(context_bytes(context))}


class VaultTransit:
    """The KeyService of a Vault or OpenBao Transit mount, reached with a token or AppRole."""

    name = NAME
    label = "Vault / OpenBao Transit"
    ref_label = "Transit key name"

    def __init__(
        self,
        addr: str,
        *,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        namespace: str | None = None,
        cacert: str | None = None,
        mount: str = "transit",
        timeout: float = 5,
    ) -> None:
        """Prepare the client; nothing is sent to Vault until the first call."""
        import hvac
        import requests

        self._addr = addr
        self._mount = mount.strip("/")
        # "" rather than None: hvac would otherwise take VAULT_TOKEN or ~/.vault-token.
        self._client = hvac.Client(
            url=addr, token=token or "", verify=cacert or True, timeout=timeout, namespace=namespace
        )
        self._errors = hvac.exceptions
        self._net_errors = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
        self._approle = (role_id, secret_id) if role_id and secret_id else None
        self._secrets = tuple(s for s in (token, secret_id) if s)
        self._login_lock = threading.Lock()
        self._token_until = 0.0
        self._configs: dict[str, tuple[_KeyConfig, float]] = {}

    def __repr__(self) -> str:
        """Name the address and mount, never the token or the AppRole secret."""
        return f"<VaultTransit {self._addr} mount={self._mount}>"

    # -- KeyService ----------------------------------------------------------------------

    def check_ref(self, ref: str) -> str | None:
        """Return why ref is not a usable Transit key name, or None."""
        if not ref:
            return "Enter the Transit key name."
        if len(ref) > 128:
            return "A Transit key name has at most 128 characters."
        if not _REF.fullmatch(ref) or set(ref) == {"."}:
            return "A Transit key name has only letters, digits, '.', '_' and '-'."
        return None

    def wrap(self, ref: KeyRef, data_key: bytes, context: WrapContext) -> bytes:
        """Encrypt data_key under the key's newest version, bound to context."""
        name = self._name(ref)
        # Reading the key first also keeps a mistyped name from creating a key (upsert).
        body = {"plaintext": _b64(data_key), **self._config(name).binding(context)}
        return self._call(name, "wrap", lambda: self._write(f"encrypt/{name}", body)).encode()

    def unwrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext) -> bytes:
        """Decrypt a wrapped data key; a context it was not wrapped with is refused."""
        name = self._name(ref)
        body = {"ciphertext": _ciphertext(name, wrapped), **self._config(name).binding(context)}
        path = f"decrypt/{name}"
        return self._call(
            name, "unwrap", lambda: base64.b64decode(self._write(path, body, "plaintext"))
        )

    def rewrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext, new_ref: KeyRef) -> bytes:
        """Wrap the same data key under new_ref's newest version."""
        name = self._name(ref)
        config = self._config(name)
        if new_ref.ref == ref.ref and config.derived:
            # The data key stays inside Vault; only a derived key's binding survives rewrap.
            body = {"ciphertext": _ciphertext(name, wrapped), **config.binding(context)}
            return self._call(name, "rewrap", lambda: self._write(f"rewrap/{name}", body)).encode()
        return self.wrap(new_ref, self.unwrap(ref, wrapped, context), context)

    def describe(self, ref: KeyRef) -> KeyInfo:
        """Read the key afresh: its type, newest version and oldest decryptable version."""
        config = self._config(self._name(ref), fresh=True)
        detail = (
            f"{config.type}, latest version {config.latest_version}, "
            f"decrypts from version {config.min_decryption_version}"
        )
        return KeyInfo(str(config.latest_version), detail + (", derived" if config.derived else ""))

    def ping(self) -> None:
        """Look up the portal's own token: proves Vault answers and still accepts it."""
        self._call(None, "check the token", self._client.auth.token.lookup_self)

    def _name(self, ref: KeyRef) -> str:
        """The Transit key name of ref, refused before it reaches a URL if malformed."""
        problem = self.check_ref(ref.ref)
        if problem:
            raise CustodyError(f"'{ref.ref[:140]}' is not a Transit key name: {problem}")
        return ref.ref

    def _config(self, name: str, fresh: bool = False) -> _KeyConfig:
        """The key's settings, read at most once a minute unless fresh."""
        hit = self._configs.get(name)
        if hit and not fresh and hit[1] > time.monotonic():
            return hit[0]
        config = self._call(name, "read", lambda: self._read_config(name))
        self._configs[name] = (config, time.monotonic() + _CONFIG_SECONDS)
        return config

    def _read_config(self, name: str) -> _KeyConfig:
        """Read the key's settings; refuse a key that cannot wrap a data key bound to a context."""
        info = (self._client.read(f"{self._mount}/keys/{name}") or {}).get("data")
        if not info or info.get("soft_deleted"):
            raise KeyAccessRevoked(f"Transit key '{name}' not found")
        kind, derived = str(info.get("type")), bool(info.get("derived"))
        if not info.get("supports_encryption"):
            raise CustodyError(f"Transit key '{name}' is {kind}, which cannot encrypt")
        if not derived and kind not in _AEAD_TYPES:
            raise CustodyError(
                f"Transit key '{name}' is {kind}, which cannot bind the organisation to a "
                "wrapped key; use an aes256-gcm96 key"
            )
        versions = int(info["latest_version"]), int(info.get("min_decryption_version") or 1)
        return _KeyConfig(kind, derived, *versions)

    def _write(self, path: str, body: dict[str, Any], field: str = "ciphertext") -> str:
        """POST to a path under the Transit mount and return one field of the answer."""
        return str(self._client.write_data(f"{self._mount}/{path}", data=body)["data"][field])

    def _login(self, force: bool) -> None:
        """Log in with AppRole when there is no token yet, it is near expiry, or force."""
        if self._approle is None:
            return
        with self._login_lock:
            if not force and self._client.token and time.monotonic() < self._token_until:
                return
            try:
                auth = self._client.auth.approle.login(*self._approle)["auth"]
            except Exception as exc:  # noqa: BLE001 - becomes ours in _error
                error = self._error(exc, None, "log in")
            else:
                lease = float(auth.get("lease_duration") or 0)
                # Log in again at 90% of the lease rather than meet an expired token.
                self._token_until = time.monotonic() + (lease * 0.9 if lease else float("inf"))
                return
        raise error from None

    def _call(self, name: str | None, action: str, call: Callable[[], T]) -> T:
        """Run call logged in; with AppRole a refusal is retried once after a fresh login."""
        for attempt in (1, 2):
            try:
                self._login(force=attempt == 2)
                return call()
            except Exception as exc:  # noqa: BLE001 - every library error becomes ours below
                retry = isinstance(exc, self._errors.Forbidden) and self._approle is not None
                error = self._error(exc, name, action)
            if not retry:
                break
        # Raised outside the except block: no library exception (URL, body) rides along.
        raise error from None

    def _error(self, exc: Exception, name: str | None, action: str) -> CustodyError:
        """Translate a library exception into the custody error it means."""
        errors = self._errors
        what = f"Transit key '{name}'" if name else "the portal's token"
        if isinstance(exc, CustodyError):
            return exc
        if isinstance(exc, self._net_errors):
            kind = "timed out" if "Timeout" in type(exc).__name__ else "connection failed"
            return KeyServiceUnreachable(f"Vault at {self._addr} did not answer ({kind})")
        if isinstance(exc, errors.VaultDown):
            return KeyServiceUnreachable(f"Vault at {self._addr} is sealed or unavailable")
        busy = (errors.RateLimitExceeded, errors.BadGateway, errors.PreconditionFailed)
        if isinstance(exc, busy):
            return KeyServiceUnreachable(f"Vault at {self._addr} is busy; try again")
        reason = self._reason(exc)
        if action == "log in" and isinstance(exc, errors.VaultError):
            return KeyAccessRevoked(f"Vault refused the AppRole login ({reason or 'denied'})")
        if isinstance(exc, errors.Forbidden | errors.Unauthorized):
            denied = f"access to {what}" if name else what
            return KeyAccessRevoked(f"Vault denied {denied} (permission denied)")
        if isinstance(exc, errors.InvalidPath) or "not found" in reason:
            return KeyAccessRevoked(f"{what} not found")
        if "disallowed by policy" in reason:
            return KeyAccessRevoked(
                f"{what} no longer decrypts this version (min_decryption_version is above it)"
            )
        if "authentication failed" in reason or "invalid ciphertext" in reason:
            return CustodyError(
                f"{what} could not {action} this data key: wrapped for another organisation "
                "or key, or altered"
            )
        return CustodyError(f"Vault could not {action} with {what}: {reason or type(exc).__name__}")

    def _reason(self, exc: Exception) -> str:
        """Vault's own words for a refusal, short, lower-case, with no secret of ours in it."""
        errors = getattr(exc, "errors", None) or []
        text = " ".join(str(e) for e in errors)[:160].lower()
        for secret in self._secrets:
            text = text.replace(secret.lower(), "***")
        return text


def _ciphertext(name: str, wrapped: bytes) -> str:
    """The Transit ciphertext a stored wrapped key holds, or CustodyError if it is none."""
    try:
        text = bytes(wrapped).decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not re.fullmatch(r"vault:v\d+:[A-Za-z0-9+/=]+", text):
        raise CustodyError(f"the data key wrapped by Transit key '{name}' is damaged") from None
    return text


def start(config: Mapping[str, Any]) -> VaultTransit | None:
    """The Transit service of these settings, or None when VAULT_ADDR is not set."""
    addr = config.get("VAULT_ADDR")
    if not addr:
        return None
    try:
        import hvac  # noqa: F401
    except ImportError:
        raise CustodyError(
            "VAULT_ADDR is set but hvac is missing: install 'byok-portal[vault]'"
        ) from None
    token, role_id = config.get("VAULT_TOKEN"), config.get("VAULT_ROLE_ID")
    secret_id = config.get("VAULT_SECRET_ID")
    if not token and not (role_id and secret_id):
        raise CustodyError(
            "VAULT_ADDR is set but neither VAULT_TOKEN nor VAULT_ROLE_ID and VAULT_SECRET_ID are"
        )
    # AppRole wins over a token when both are set: it can log in again when a token expires.
    return VaultTransit(
        addr,
        token=None if role_id and secret_id else token,
        role_id=role_id,
        secret_id=secret_id,
        namespace=config.get("VAULT_NAMESPACE"),
        cacert=config.get("VAULT_CACERT"),
        mount=config.get("VAULT_TRANSIT_MOUNT") or "transit",
        timeout=config.get("KMS_TIMEOUT_SECONDS") or 5,
    )
