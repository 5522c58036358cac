"""The master-key backend: organisation keys sealed under the installation master key.

See docs/format.md for the sealed-key format and the master key file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portal.crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES, key_id
from portal.keys.custody.base import CustodyError, Startup

NAME = "master-key"
SEALED_HEADER = b"SK\x01"
SEALED_BYTES = len(SEALED_HEADER) + NONCE_BYTES + KEY_BYTES + TAG_BYTES
SUBKEY_INFO_PREFIX = b"byok-portal "
SEALING_PURPOSE = b"key custody"

log = logging.getLogger(__name__)


def derive_subkey(master_key: bytes, purpose: bytes) -> bytes:
    """Derive a 32-byte key for one purpose from the master key (HKDF-SHA256)."""
    if len(master_key) != KEY_BYTES:
        raise ValueError(f"the master key must be {KEY_BYTES} bytes, got {len(master_key)}")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=SUBKEY_INFO_PREFIX + purpose,
    )
    return hkdf.derive(bytes(master_key))


class MasterKeyCustody:
    """Seals keys with AES-256-GCM under a key derived from the installation master key."""

    name = NAME

    def __init__(self, master_key: bytes) -> None:
        """Prepare sealing under master_key, which must be 32 bytes."""
        if len(master_key) != KEY_BYTES:
            raise ValueError(f"the master key must be {KEY_BYTES} bytes, got {len(master_key)}")
        self._master_key_id = key_id(master_key)
        # A derived key, not the master key itself, so the master key keeps a single role
        # (input to HKDF) however many purposes later derive keys from it.
        self._aead = AESGCM(derive_subkey(master_key, SEALING_PURPOSE))

    def __repr__(self) -> str:
        """Name the master key by id only."""
        return f"<MasterKeyCustody master_key_id={self._master_key_id.hex()}>"

    @property
    def master_key_id(self) -> bytes:
        """Public id of the master key (not stored: under another master key unsealing fails)."""
        return self._master_key_id

    def seal(self, key: bytes, context: bytes) -> bytes:
        """Return SK\\x01 || nonce || AES-GCM(key) with context as associated data."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"only {KEY_BYTES}-byte keys are sealed, got {len(key)}")
        nonce = os.urandom(NONCE_BYTES)
        return SEALED_HEADER + nonce + self._aead.encrypt(nonce, bytes(key), context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """Return the sealed key, or raise CustodyError if it is malformed, moved or tampered."""
        if len(sealed) != SEALED_BYTES or sealed[: len(SEALED_HEADER)] != SEALED_HEADER:
            raise CustodyError("not a sealed key in a known format")
        nonce_end = len(SEALED_HEADER) + NONCE_BYTES
        try:
            return self._aead.decrypt(
                sealed[len(SEALED_HEADER) : nonce_end], sealed[nonce_end:], context
            )
        except InvalidTag:
            raise CustodyError(
                "the sealed key cannot be unsealed: it was sealed under another master key "
                "or for another organisation or key, or it was altered"
            ) from None


def start(startup: Startup) -> MasterKeyCustody | None:
    """Start the master-key backend, or return None when no master key is loaded."""
    return MasterKeyCustody(startup.master_key) if startup.master_key else None


def load_configured(config: Mapping[str, Any], create: bool = False) -> tuple[bytes | None, str]:
    """Load the master key the settings point at; return it (or None) and where it came from."""
    try:
        master = load_master_key(
            config.get("BYOK_MASTER_KEY"), config["BYOK_MASTER_KEY_FILE"], create=create
        )
    except CustodyError as exc:
        log.error("master key not loaded: %s", exc)
        master = None
    if master is None:
        return None, "missing (keys are unavailable)"
    from_env = bool(config.get("BYOK_MASTER_KEY"))
    return master, "BYOK_MASTER_KEY" if from_env else str(config["BYOK_MASTER_KEY_FILE"])


def load_master_key(
    env_value: str | None, file_path: str | os.PathLike[str], create: bool = False
) -> bytes | None:
    """Return the master key from the environment value, else from the file (made if asked)."""
    if env_value is not None and env_value.strip():
        return _decode_master_key(env_value, "the master key in the environment")
    path = Path(file_path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        if not create:
            return None
        text = _create_master_key_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise CustodyError(
            f"cannot read the master key file {path}: {type(exc).__name__}"
        ) from None
    else:
        _warn_if_exposed(path)
    return _decode_master_key(text, f"the master key file {path}")


def _decode_master_key(text: str, source: str) -> bytes:
    """Decode base64 of exactly 32 bytes, or raise CustodyError naming only the source."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise CustodyError(f"{source} is not standard base64 of {KEY_BYTES} bytes")
    return key


def _create_master_key_file(path: Path) -> str:
    """Create the master key file atomically with mode 0600 and return its text."""
    text = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii") + "\n"
    # Written under a temporary name, then linked into place: the key file never exists
    # half-written, and link() fails rather than replace a file another process just made.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            log.info("master key file %s was created concurrently; using it", path)
            return path.read_text(encoding="ascii")
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise CustodyError(f"cannot create the master key file {path}: {exc.strerror}") from None
    log.warning("created a new master key file %s; back it up, apart from database backups", path)
    return text


def _warn_if_exposed(path: Path) -> None:
    """Log a warning when the master key file is readable by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("master key file %s is accessible to group or others; chmod 600 it", path)
