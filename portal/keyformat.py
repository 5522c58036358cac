"""Reading and writing a BYOK key as the base64 text admins paste and keep in their vaults."""

from __future__ import annotations

import base64
import binascii
import string

from portal.crypto import KEY_BYTES

_HEX_DIGITS = frozenset(string.hexdigits)
_BASE64_CHARS = frozenset(string.ascii_letters + string.digits + "+/=")
_AES128_BYTES = 16
# A hex dump shorter than this is more likely a short base64 string that happens to use
# only the letters a-f; 32 hex digits is the shortest hex form of a real AES key.
_MIN_HEX_CHARS = 32

ERROR_CODES = ("empty", "pem", "json", "hex", "not_base64", "aes128", "wrong_length")


class KeyFormatError(ValueError):
    """A pasted key was refused; `code` says why and str() says what to do, without the input."""

    def __init__(self, code: str, message: str) -> None:
        """Record a machine-readable code and a user-facing message."""
        if code not in ERROR_CODES:
            raise ValueError(f"unknown key format error code {code!r}")
        super().__init__(message)
        self.code = code


def _bytes(n: int) -> str:
    """Say "1 byte" or "N bytes"."""
    return "1 byte" if n == 1 else f"{n} bytes"


def parse_key(text: str) -> bytes:
    """Return the 32-byte key encoded as standard base64 in text, or raise KeyFormatError."""
    text = text.strip()
    if not text:
        raise KeyFormatError("empty", "No key was entered.")
    if text.startswith("-----BEGIN"):
        raise KeyFormatError(
            "pem", "This looks like a PEM block; paste only the base64 of the raw 32-byte key."
        )
    if text.startswith("{"):
        raise KeyFormatError(
            "json",
            "This looks like JSON (for example a JWK); paste only the base64 of the raw "
            '32-byte key, such as the value of its "k" field converted to standard base64.',
        )
    if len(text) >= _MIN_HEX_CHARS and len(text) % 2 == 0 and _HEX_DIGITS.issuperset(text):
        # Checked before base64 because 64 hex digits are also valid base64 (of 48 bytes).
        raise KeyFormatError(
            "hex",
            f"This looks like a hex-encoded key of {_bytes(len(text) // 2)}; the portal expects "
            "base64 of 32 bytes. Convert a hex key with: xxd -r -p key.hex | base64",
        )
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("not_base64", _not_base64_message(text)) from None
    if len(key) == _AES128_BYTES:
        raise KeyFormatError(
            "aes128",
            "This is a 128-bit (AES-128) key: 16 bytes were decoded, "
            "32 bytes (AES-256) are needed.",
        )
    if len(key) != KEY_BYTES:
        verb = "was" if len(key) == 1 else "were"
        raise KeyFormatError(
            "wrong_length",
            f"{_bytes(len(key))} {verb} decoded; a BYOK key must be exactly 32 bytes (AES-256).",
        )
    return key


def _not_base64_message(text: str) -> str:
    """Explain why text is not standard base64, naming no character or part of it."""
    message = "This is not valid base64."
    if "-" in text or "_" in text:
        hint = (
            " It contains '-' or '_', which belong to the URL-safe alphabet; "
            "use standard base64 (with '+' and '/')."
        )
    elif not _BASE64_CHARS.issuperset(text):
        hint = (
            " It contains characters that base64 does not use (only A-Z, a-z, 0-9, '+', '/' "
            "and '=' padding are allowed; spaces or line breaks inside the key are not)."
        )
    elif len(text) % 4:
        hint = " Its length is not a multiple of 4; is '=' padding missing or was it cut short?"
    else:
        hint = " Its '=' padding is misplaced."
    return message + hint + " A 32-byte key is 44 characters ending in '='."


def format_key(key: bytes) -> str:
    """Return a key as the standard base64 text that parse_key accepts."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key must be {KEY_BYTES} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")
