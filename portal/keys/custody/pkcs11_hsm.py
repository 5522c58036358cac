"""PKCS#11 HSM key service: data keys wrapped by an AES key that never leaves the customer's HSM.

- **Wrapping.** AES-GCM inside the token under the AES key labelled ``KeyRef.ref``, a fresh
  12-byte nonce from the OS, the wrap context as associated data; stored as
  ``b"P11G\\x01" + nonce + ciphertext-and-tag``. Another organisation's context fails the tag.
- **Key policy.** New wraps and ``describe`` refuse a key that is extractable or not
  sensitive: copies could exist outside the HSM, so revoking it would prove nothing. Unwrap
  still works, so such data can be re-wrapped; PKCS#11 only lets these attributes tighten.
- **Sessions.** Login belongs to the process and a session is not thread-safe: one read-only
  session per service and process, behind a lock, opened lazily. One inherited through fork
  (gunicorn, RQ) is abandoned, not closed (that would log the parent out), and the library is
  initialised again. A stale session, or the library after a device error, is reopened once.
- **Errors.** PIN refused, no such label on a token that answers, key not permitted to
  encrypt/decrypt: KeyAccessRevoked. Token absent, device error, module that will not start:
  KeyServiceUnreachable. A refused PIN is not retried until it changes (the PIN file is read
  at each login): retries would bring the customer's token to lockout.
- **Timeouts.** PKCS#11 calls block in C, out of KMS_TIMEOUT_SECONDS' reach; a network HSM's
  client library has its own timeouts, in its vendor configuration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.keyservice import KeyInfo, KeyRef, WrapContext

log = logging.getLogger(__name__)
T = TypeVar("T")

MAGIC = b"P11G\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER = len(MAGIC) + NONCE_BYTES
MAX_REF_CHARS = 128

# python-pkcs11 exception class names, by what they say about the token.
_STALE = {"SessionHandleInvalid", "SessionClosed", "UserNotLoggedIn", "ObjectHandleInvalid"}
_STALE |= {"KeyHandleInvalid"}
_DEVICE = {"DeviceError", "DeviceRemoved", "DeviceMemory", "TokenNotPresent", "NoSuchToken"}
_DEVICE |= {"TokenNotRecognised", "SlotIDInvalid", "GeneralError", "FunctionFailed"}
_PIN = {"PinIncorrect", "PinInvalid", "PinLenRange", "PinLocked", "PinExpired"}
_PIN |= {"UserPinNotInitialized"}
# How a GCM tag mismatch shows: SoftHSM 2.6 answers CKR_GENERAL_ERROR.
_INTEGRITY = {"EncryptedDataInvalid", "EncryptedDataLenRange", "DataInvalid", "DataLenRange"}
_INTEGRITY |= {"GeneralError", "FunctionFailed"}

# One library per module path and process, shared by every service on it: initialisation and
# login belong to the process. Entries are [library, pid, generation].
_LIBRARIES: dict[str, list[Any]] = {}
_LIBRARIES_LOCK = threading.Lock()


def _new_lock_after_fork() -> None:
    """Replace the library lock in a child: a parent's thread may have held it at fork."""
    global _LIBRARIES_LOCK
    _LIBRARIES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def _load(pkcs11: Any, module: str, reinit: bool = False) -> tuple[Any, int]:
    """Return this process's initialised library for module and its generation."""
    with _LIBRARIES_LOCK:
        entry = _LIBRARIES.get(module)
        if entry is None:
            _LIBRARIES[module] = entry = [pkcs11.lib(module), os.getpid(), 0]
        elif reinit or entry[1] != os.getpid() or not entry[0].initialized:
            # A new generation makes every service drop sessions of the old initialisation.
            entry[1], entry[2] = os.getpid(), entry[2] + 1
            with contextlib.suppress(Exception):
                entry[0].finalize()
            entry[0].initialize()
        return entry[0], entry[2]


def _kind(exc: BaseException) -> str:
    """Sort a library exception: stale, device, not-permitted or other."""
    name, text = type(exc).__name__, str(exc)
    if name in _STALE:
        return "stale"
    if name in _DEVICE or "not initialized" in text:
        return "device"
    # python-pkcs11 has no class for CKR_KEY_FUNCTION_NOT_PERMITTED (0x68).
    return "not-permitted" if text.endswith(" 0x68") else "other"


def _aad(context: WrapContext) -> bytes:
    """Encode the wrap context the same way every time, unambiguously."""
    pairs = (f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in sorted(context.items()))
    return ("byok-portal:" + ";".join(pairs)).encode()


class PKCS11KeyService:
    """Wrap and unwrap data keys with AES keys on one PKCS#11 token."""

    name = "pkcs11"
    label = "PKCS#11 HSM"
    ref_label = "PKCS#11 key label"

    def __init__(self, pkcs11: Any, module: str, token: str, pin: str | None, pin_file: str | None):
        """Use module's token labelled token, logging in with pin or pin_file's content."""
        self._p11, self._attr, self.module, self.token = pkcs11, pkcs11.Attribute, module, token
        self._pin, self._pin_file, self._refused_pin = pin, pin_file, None
        self._lock, self._lock_pid = threading.Lock(), os.getpid()
        self._session: Any = None
        self._session_of = (0, -1)  # (pid, library generation) the session belongs to

    def __repr__(self) -> str:
        """Name the module and token, never the PIN."""
        return f"<PKCS11KeyService token={self.token!r} module={self.module!r}>"

    def check_ref(self, ref: str) -> str | None:
        """Return why ref is not a usable key label, or None."""
        if not ref or len(ref) > MAX_REF_CHARS or not ref.isprintable() or ref != ref.strip():
            return f"A key label is 1 to {MAX_REF_CHARS} printable characters, no end spaces."
        return None

    def wrap(self, ref: KeyRef, data_key: bytes, context: WrapContext) -> bytes:
        """Encrypt data_key with AES-GCM inside the token, context as associated data."""
        aad = _aad(context)

        def call(session: Any) -> bytes:
            key = self._key(session, ref, "ENCRYPT", strict=True)
            nonce = os.urandom(NONCE_BYTES)
            params, gcm = self._p11.GCMParams(nonce, aad), self._p11.Mechanism.AES_GCM
            sealed = key.encrypt(bytes(data_key), mechanism=gcm, mechanism_param=params)
            return MAGIC + nonce + bytes(sealed)

        return self._run(ref, call)

    def unwrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext) -> bytes:
        """Decrypt a wrapped data key inside the token; a wrong context fails its tag."""
        blob = bytes(wrapped)
        if not blob.startswith(MAGIC) or len(blob) <= HEADER + TAG_BYTES:
            raise CustodyError(f"not a data key wrapped by PKCS#11 key '{ref.ref}'")
        params = self._p11.GCMParams(blob[len(MAGIC) : HEADER], _aad(context))

        def call(session: Any) -> bytes:
            key, gcm = self._key(session, ref, "DECRYPT"), self._p11.Mechanism.AES_GCM
            try:
                return bytes(key.decrypt(blob[HEADER:], mechanism=gcm, mechanism_param=params))
            except Exception as exc:
                if type(exc).__name__ not in _INTEGRITY:
                    raise
                # Only a token that still answers makes a failed decryption the blob's fault.
                session.token.slot.get_token()
            bad = f"a data key wrapped under PKCS#11 key '{ref.ref}' failed its integrity check"
            raise CustodyError(bad + " (another organisation's, or altered)")

        return self._run(ref, call)

    def rewrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext, new_ref: KeyRef) -> bytes:
        """Unwrap in the token and wrap again under new_ref (PKCS#11 has no rewrap call)."""
        return self.wrap(new_ref, self.unwrap(ref, wrapped, context), context)

    def describe(self, ref: KeyRef) -> KeyInfo:
        """Return the key's CKA_ID (else label), size and protection; raise if it is unusable."""

        def call(session: Any) -> KeyInfo:
            key, attr = self._key(session, ref, "ENCRYPT", "DECRYPT", strict=True), self._attr
            key_id = bytes(key[attr.ID] or b"")
            detail = f"AES-{int(key[attr.VALUE_LEN]) * 8} on token '{self.token}', sensitive, "
            return KeyInfo(key_id.hex() or f"label {ref.ref}", detail + "not extractable")

        return self._run(ref, call)

    def ping(self) -> None:
        """Prove the token answers with this session (C_GetTokenInfo)."""
        self._run(None, lambda session: session.token.slot.get_token())

    # -- sessions ------------------------------------------------------------------------

    def _guard(self) -> threading.Lock:
        """This process's lock: one inherited through fork may be held by a parent's thread."""
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    def _run(self, ref: KeyRef | None, call: Callable[[Any], T]) -> T:
        """Run call(session) under the lock, once more on a fresh session after it went stale."""
        with self._guard():
            for attempt in (1, 2):
                try:
                    return call(self._open())
                except CustodyError:
                    raise
                except Exception as exc:
                    kind = _kind(exc)
                    if attempt == 2 or kind not in ("stale", "device"):
                        raise self._translate(exc, kind, ref) from None
                # The handle is dead; a device error may need the library started again.
                self._session = None
                if kind == "device":
                    with contextlib.suppress(Exception):
                        _load(self._p11, self.module, reinit=True)
        raise AssertionError("the second attempt returns or raises")

    def _open(self) -> Any:
        """Return this process's logged-in session, opening it when needed."""
        try:
            lib, generation = _load(self._p11, self.module)
        except Exception:
            down = f"PKCS#11 token '{self.token}' did not answer: {self.module} would not start"
            raise KeyServiceUnreachable(down) from None
        if self._session is not None and self._session_of == (os.getpid(), generation):
            return self._session
        self._session = None  # another process's (fork) or an old initialisation's: abandoned
        token, pin = lib.get_token(token_label=self.token), self._read_pin()
        if pin == self._refused_pin:
            raise KeyAccessRevoked(f"PKCS#11 token '{self.token}' refused this PIN before")
        try:
            session = token.open(user_pin=pin)
        except Exception as exc:
            name = type(exc).__name__
            if name in _PIN:
                if name in ("PinIncorrect", "PinInvalid", "PinLenRange"):
                    self._refused_pin = pin
                refused = f"PKCS#11 token '{self.token}' refused the PIN ({name})"
                raise KeyAccessRevoked(refused) from None
            if name != "UserAlreadyLoggedIn":
                raise
            session = token.open()  # a session of this process is logged in, so this one is
        self._session, self._session_of = session, (os.getpid(), generation)
        return session

    def _read_pin(self) -> str:
        """The user PIN, from PKCS11_PIN or (read again at each login) PKCS11_PIN_FILE."""
        if self._pin is not None:
            return self._pin
        try:
            return Path(self._pin_file or "").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise CustodyError(f"PKCS11_PIN_FILE {self._pin_file} could not be read") from None

    def _key(self, session: Any, ref: KeyRef, *uses: str, strict: bool = False) -> Any:
        """The one AES key labelled ref.ref, permitted these uses (and, if strict, the policy)."""
        attr, p11, where = self._attr, self._p11, f"PKCS#11 key '{ref.ref}' on token '{self.token}'"
        template = {attr.CLASS: p11.ObjectClass.SECRET_KEY, attr.KEY_TYPE: p11.KeyType.AES}
        keys = list(session.get_objects({**template, attr.LABEL: ref.ref}))
        if len(keys) > 1:
            raise CustodyError(f"{where}: {len(keys)} AES keys have this label; it must be unique")
        if not keys:
            # A token that stopped answering finds nothing either; only one that answers counts.
            session.token.slot.get_token()
            raise KeyAccessRevoked(f"PKCS#11 key '{ref.ref}' not found on token '{self.token}'")
        # Checked here: python-pkcs11 gives a key without CKA_DECRYPT no decrypt() at all.
        for use in uses:
            if not keys[0][getattr(attr, use)]:
                raise KeyAccessRevoked(f"{where} is not permitted to {use.lower()} (CKA_{use})")
        if strict and (keys[0][attr.EXTRACTABLE] or not keys[0][attr.SENSITIVE]):
            raise CustodyError(f"{where} is extractable or not sensitive: it could leave the HSM")
        return keys[0]

    def _translate(self, exc: BaseException, kind: str, ref: KeyRef | None) -> CustodyError:
        """The portal's error for a library failure: its class name, never its text."""
        name, key = type(exc).__name__, f"key '{ref.ref}' on " if ref else ""
        if kind in ("stale", "device"):
            return KeyServiceUnreachable(f"PKCS#11 token '{self.token}' did not answer ({name})")
        if kind == "not-permitted":
            return KeyAccessRevoked(f"PKCS#11 {key}token '{self.token}' refused this use of it")
        if name == "MultipleTokensReturned":
            return CustodyError(f"more than one PKCS#11 token is labelled '{self.token}'")
        return CustodyError(f"PKCS#11 call on {key}token '{self.token}' failed ({name})")


def start(config: Mapping[str, Any]) -> PKCS11KeyService | None:
    """Start the PKCS#11 service when PKCS11_MODULE is set; the token may be absent for now."""
    module = config.get("PKCS11_MODULE")
    if not module:
        return None
    try:
        import pkcs11
    except ImportError:
        raise CustodyError(
            "PKCS11_MODULE is set but python-pkcs11 is missing: install 'byok-portal[pkcs11]'"
        ) from None
    token = config.get("PKCS11_TOKEN_LABEL")
    pin, pin_file = config.get("PKCS11_PIN") or None, config.get("PKCS11_PIN_FILE") or None
    # Both PIN settings at once is ambiguous, and a PIN sent by mistake costs a lockout try.
    if not token or (pin is None) == (pin_file is None):
        raise CustodyError("PKCS11_MODULE needs PKCS11_TOKEN_LABEL and one of PKCS11_PIN(_FILE)")
    if not Path(module).is_file():
        raise CustodyError(f"PKCS11_MODULE {module} is not a file")
    service = PKCS11KeyService(pkcs11, module, token, pin=pin, pin_file=pin_file)
    service._read_pin()
    try:
        _load(pkcs11, module)
    except Exception:
        log.warning("PKCS#11 module %s did not initialise yet; calls will retry", module)
    return service
