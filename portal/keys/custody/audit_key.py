"""Where the audit signing key comes from: the key that signs audit chain heads and checkpoints.

Today it is derived from the installation master key, exactly as before this module existed, so
chains signed earlier still verify. It is its own source (not a by-product of key custody) so that
a later backend can keep it elsewhere without touching the audit code.
"""

from __future__ import annotations

from typing import Protocol

from portal.keys.custody.master_key import derive_subkey

AUDIT_CHAIN_PURPOSE = b"audit-chain"


class AuditKeySource(Protocol):
    """Something that yields the audit signing key, or None when it cannot."""

    name: str

    def signing_key(self) -> bytes | None:
        """Return the 32-byte audit signing key, or None when it is unavailable."""
        ...


class MasterKeyAuditSource:
    """The audit signing key derived from the master key (HKDF info 'byok-portal audit-chain')."""

    name = "master-key"

    def __init__(self, master_key: bytes | None) -> None:
        """Derive the signing key now; a missing master key means no signing key."""
        self._key = derive_subkey(master_key, AUDIT_CHAIN_PURPOSE) if master_key else None

    def __repr__(self) -> str:
        """Say whether a key is loaded, never the key."""
        return f"<MasterKeyAuditSource loaded={self._key is not None}>"

    def signing_key(self) -> bytes | None:
        """Return the derived audit signing key, or None without a master key."""
        return self._key
