"""Authenticated encryption of tenant data under BYOK keys (format: docs/format.md)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BytesLike = bytes | bytearray | memoryview

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 8
TAG_BYTES = 16
HEADER = b"BK\x01"
MAGIC = HEADER[:2]
VERSION = HEADER[2]

_KEY_ID_AT = len(HEADER)
_NONCE_AT = _KEY_ID_AT + KEY_ID_BYTES
_BODY_AT = _NONCE_AT + NONCE_BYTES
OVERHEAD = _BODY_AT + TAG_BYTES
# Where the nonce sits in a ciphertext (public: rotation compares it to detect rewrites).
NONCE_AT, BODY_AT = _NONCE_AT, _BODY_AT

AD_PREFIX = b"byok-ad\x01"
_AD_FIELD_MAX = 0xFFFF
_KEY_ID_LABEL = b"byok key id"
_SELF_TEST_MESSAGE = b"byok-portal key self-test"
# The associated data of four empty fields: no stored value can have it.
_SELF_TEST_AD = AD_PREFIX + b"\x00\x00" * 4

# Below this size, concatenating small bytes is cheaper than encrypt_into's buffer setup; above
# it, writing into one preallocated buffer avoids copying the whole ciphertext a second time.
_ENCRYPT_INTO_MIN = 16 * 1024
# Slicing a large blob as bytes would copy it before decryption; memoryview slices do not.
_DECRYPT_VIEW_MIN = 4 * 1024

DECRYPTION_FAILURES = (
    "malformed",
    "unknown_key",
    "key_unavailable",
    "integrity",
    # The key is held in the customer's key service, which refused or did not answer: the
    # item is intact and reads again once access comes back.
    "key_access_revoked",
    "key_service_unreachable",
)
# Reasons that mean "not now" rather than "never": the item is reported unavailable.
TEMPORARY_FAILURES = ("key_access_revoked", "key_service_unreachable")


class DecryptionError(Exception):
    """A ciphertext could not be decrypted; `reason` says why, never with plaintext or keys."""

    def __init__(self, reason: str, key_id: bytes | None = None, detail: str = "") -> None:
        """Record why decryption failed and under which key id, if one was read."""
        if reason not in DECRYPTION_FAILURES:
            raise ValueError(f"unknown decryption failure reason {reason!r}")
        self.reason = reason
        self.key_id = key_id
        self.detail = detail
        super().__init__(reason, key_id)

    def __str__(self) -> str:
        """Describe the failure for logs and admins, naming the key only by fingerprint."""
        under = f" (key {fingerprint(self.key_id)})" if self.key_id is not None else ""
        text = {
            "malformed": "not a valid BYOK ciphertext",
            "unknown_key": "encrypted under a key this organisation does not have",
            "key_unavailable": "encrypted under a key whose sealed copy cannot be unsealed",
            "integrity": "integrity check failed: tampered, or moved from another place",
            "key_access_revoked": "the organisation's key service refused access to its key",
            "key_service_unreachable": "the organisation's key service did not answer",
        }[self.reason]
        return f"{text}{under}" + (f": {self.detail}" if self.detail else "")


class NoEncryptingKey(Exception):
    """The keyring has no key that may encrypt new data."""


def generate_key() -> bytes:
    """Return a new random 32-byte AES-256 key."""
    return secrets.token_bytes(KEY_BYTES)


def _check_key(key: bytes) -> bytes:
    """Return the key as bytes, or raise ValueError if it is not 32 bytes long."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key must be {KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def key_id(key: bytes) -> bytes:
    """Return the key's public 8-byte identifier: HMAC-SHA256(key, "byok key id")[:8]."""
    return hmac.digest(_check_key(key), _KEY_ID_LABEL, hashlib.sha256)[:KEY_ID_BYTES]


def fingerprint(key_id: bytes) -> str:
    """Format a key id for people, e.g. "3f2a:9c01:77de:0b45"."""
    if len(key_id) != KEY_ID_BYTES:
        raise ValueError(f"a key id must be {KEY_ID_BYTES} bytes, got {len(key_id)}")
    text = bytes(key_id).hex()
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def parse_fingerprint(text: str) -> bytes:
    """Return the key id written as a fingerprint, with or without colons, in any case."""
    compact = text.strip().replace(":", "").lower()
    if len(compact) != 2 * KEY_ID_BYTES or not all(c in "0123456789abcdef" for c in compact):
        raise ValueError("a key fingerprint is 16 hex digits, optionally grouped with ':'")
    return bytes.fromhex(compact)


def associated_data(company_id: str, table: str, column: str, row_id: str) -> bytes:
    """Encode where a value lives, so that a ciphertext moved anywhere else fails to decrypt."""
    parts = [AD_PREFIX]
    for field in (company_id, table, column, row_id):
        if not isinstance(field, str):
            raise TypeError(f"associated data fields are str, got {type(field).__name__}")
        raw = field.encode("utf-8")
        if len(raw) > _AD_FIELD_MAX:
            raise ValueError(f"associated data field longer than {_AD_FIELD_MAX} bytes")
        parts += (struct.pack(">H", len(raw)), raw)
    return b"".join(parts)


def associated_data_for(company_id: str, table: str, column: str) -> Callable[[str], bytes]:
    """``associated_data`` with the first three fields fixed: a function of the row id.

    For loops over many rows of one column (a rotation batch): the fixed part is encoded
    once, and the result is byte for byte what ``associated_data`` returns.
    """
    head = associated_data(company_id, table, column, "")[:-2]  # drop the empty id's length
    pack = struct.Struct(">H").pack

    def for_row(row_id: str) -> bytes:
        raw = row_id.encode("utf-8")
        if len(raw) > _AD_FIELD_MAX:
            raise ValueError(f"associated data field longer than {_AD_FIELD_MAX} bytes")
        return head + pack(len(raw)) + raw

    return for_row


def parse(blob: BytesLike) -> tuple[bytes, bytes, memoryview]:
    """Split a ciphertext into (key id, nonce, body with tag) without copying the body."""
    view = memoryview(blob).cast("B")
    _check_framing(view)
    return bytes(view[_KEY_ID_AT:_NONCE_AT]), bytes(view[_NONCE_AT:_BODY_AT]), view[_BODY_AT:]


def blob_key_id(blob: BytesLike) -> bytes:
    """Return the id of the key a ciphertext was encrypted under."""
    _check_framing(blob)
    return bytes(blob[_KEY_ID_AT:_NONCE_AT])


def _check_framing(blob: BytesLike) -> None:
    """Raise DecryptionError("malformed") unless the blob has a known header and full length."""
    if len(blob) < OVERHEAD:
        raise DecryptionError("malformed", detail=f"{len(blob)} bytes is shorter than {OVERHEAD}")
    if blob[:2] != MAGIC:
        raise DecryptionError("malformed", detail="no BK header")
    if blob[2] != VERSION:
        raise DecryptionError("malformed", detail=f"unsupported format version {blob[2]}")


class Keyring:
    """The keys one organisation can use now: at most one encrypts, all listed ones decrypt."""

    def __init__(
        self,
        encrypting: bytes | None = None,
        decrypt_only: Iterable[bytes] = (),
        unavailable: Iterable[bytes] | Mapping[bytes, str] = (),
    ) -> None:
        """Build AES-GCM contexts once per key; `unavailable` lists ids of unsealable keys
        (or maps them to the reason items under them report, "key_unavailable" by default)."""
        self._aeads: dict[bytes, AESGCM] = {}
        self._encrypting_id: bytes | None = None
        self._encrypting_aead: AESGCM | None = None
        self._prefix = b""
        if encrypting is not None:
            self._encrypting_id = self._add(encrypting)
            self._encrypting_aead = self._aeads[self._encrypting_id]
            self._prefix = HEADER + self._encrypting_id
        for key in decrypt_only:
            self._add(key)
        # An id listed as unavailable whose material was also given is usable: having the key
        # wins (say, a lost key that was since restored), and refusing would only crash reads.
        reasons = unavailable if isinstance(unavailable, Mapping) else dict.fromkeys(unavailable)
        self._unavailable = {
            bytes(i): why or "key_unavailable"
            for i, why in reasons.items()
            if bytes(i) not in self._aeads
        }
        if any(len(i) != KEY_ID_BYTES for i in self._unavailable):
            raise ValueError(f"unavailable keys are given by their {KEY_ID_BYTES}-byte key id")
        self._by_prefix = {HEADER + kid: aead for kid, aead in self._aeads.items()}
        # Bound decrypt methods, looked up once: small values are dominated by Python overhead.
        self._decrypt_by_prefix = {p: aead.decrypt for p, aead in self._by_prefix.items()}

    def _add(self, key: bytes) -> bytes:
        """Register a key for decryption and return its id."""
        kid = key_id(key)
        if kid not in self._aeads:
            self._aeads[kid] = AESGCM(bytes(key))
        return kid

    def __repr__(self) -> str:
        """Show fingerprints only, so a keyring in a log or traceback reveals no key."""
        ids = ", ".join(sorted(fingerprint(i) for i in self._aeads))
        current = fingerprint(self._encrypting_id) if self._encrypting_id else None
        return f"<Keyring encrypting={current} keys=[{ids}] unavailable={len(self._unavailable)}>"

    @property
    def encrypting_key_id(self) -> bytes | None:
        """Id of the key that encrypts new data, or None if this keyring only decrypts."""
        return self._encrypting_id

    def key_ids(self) -> set[bytes]:
        """Ids of the keys whose material this keyring holds (not the unavailable ones)."""
        return set(self._aeads)

    def has(self, key_id: bytes) -> bool:
        """Whether this keyring can decrypt data under the given key id."""
        return bytes(key_id) in self._aeads

    def encrypt(self, plaintext: BytesLike, aad: bytes) -> bytes | bytearray:
        """Encrypt under the encrypting key with a fresh nonce (a bytearray from 16 KiB up)."""
        aead = self._encrypting_aead
        if aead is None:
            raise NoEncryptingKey("this keyring has no key that may encrypt new data")
        nonce = os.urandom(NONCE_BYTES)
        size = len(plaintext)
        if size < _ENCRYPT_INTO_MIN:
            return self._prefix + nonce + aead.encrypt(nonce, plaintext, aad)
        out = bytearray(OVERHEAD + size)
        out[:_NONCE_AT] = self._prefix
        out[_NONCE_AT:_BODY_AT] = nonce
        aead.encrypt_into(nonce, plaintext, aad, memoryview(out)[_BODY_AT:])
        # Returned as is: bytes(out) would copy the whole ciphertext again (about +15% time
        # at 256 KiB). A bytearray binds to BLOB/bytea columns and compares equal to bytes.
        return out

    def decrypt(self, blob: BytesLike, aad: bytes) -> bytes:
        """Decrypt with the key named in the blob (never by trying keys) and check the AD."""
        # One lookup on header + key id both checks the format and picks the key; this matters
        # because for small values the per-call Python work is comparable to AES-GCM itself.
        try:
            decrypt = self._decrypt_by_prefix[blob[:_NONCE_AT]]
        except (KeyError, TypeError):
            decrypt = self._lookup(blob).decrypt
        if len(blob) >= _DECRYPT_VIEW_MIN:
            blob = memoryview(blob)  # no copy of a large body
        try:
            return decrypt(blob[_NONCE_AT:_BODY_AT], blob[_BODY_AT:], aad)
        except (InvalidTag, ValueError):
            # Too short to hold a nonce and a tag is malformed; anything else failed the tag.
            _check_framing(blob)
            raise DecryptionError("integrity", bytes(blob[_KEY_ID_AT:_NONCE_AT])) from None

    def _lookup(self, blob: BytesLike) -> AESGCM:
        """Find the key for a blob the fast path missed, or say precisely why there is none."""
        _check_framing(blob)
        kid = bytes(blob[_KEY_ID_AT:_NONCE_AT])
        aead = self._aeads.get(kid)
        if aead is None:
            raise DecryptionError(self._unavailable.get(kid, "unknown_key"), kid)
        return aead


def self_test(key: bytes) -> bool:
    """Check that a key encrypts and decrypts, and that a tampered ciphertext is refused."""
    ring = Keyring(encrypting=key)
    blob = bytearray(ring.encrypt(_SELF_TEST_MESSAGE, _SELF_TEST_AD))
    try:
        if ring.decrypt(bytes(blob), _SELF_TEST_AD) != _SELF_TEST_MESSAGE:
            return False
    except DecryptionError:
        return False
    blob[-1] ^= 1
    try:
        ring.decrypt(bytes(blob), _SELF_TEST_AD)
    except DecryptionError as exc:
        return exc.reason == "integrity"
    return False
