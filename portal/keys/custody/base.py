"""What every custody backend provides: seals that the database alone cannot open."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class CustodyError(Exception):
    """A sealed key or the master key could not be used; the message never holds key material.

    ``code`` is what items under such a key report as their reason (API, pages, audit).
    """

    code = "key_unavailable"


class KeyAccessRevoked(CustodyError):
    """The customer's key service refused: access revoked, key disabled, deleted or unknown."""

    code = "key_access_revoked"


class KeyServiceUnreachable(CustodyError):
    """The customer's key service did not answer (connection refused, timeout, open circuit)."""

    code = "key_service_unreachable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        """Say what failed and how many seconds a caller should wait before trying again."""
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class KeyCustody(Protocol):
    """Something that seals organisation keys so that the database alone cannot unseal them."""

    name: str

    def seal(self, key: bytes, context: bytes) -> bytes:
        """Return a sealed copy of key, bound to context (organisation and key id)."""
        ...

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """Return the key sealed with this context, or raise CustodyError."""
        ...


@dataclass(frozen=True)
class Startup:
    """What a backend may start from: the app's settings and the master key, if one is loaded."""

    # Neither is shown by repr(): the settings hold BYOK_MASTER_KEY and SECRET_KEY too.
    config: Mapping[str, Any] = field(repr=False)
    master_key: bytes | None = field(default=None, repr=False)


# Returns None when the backend cannot run here (e.g. no master key): its keys are unavailable.
Factory = Callable[[Startup], KeyCustody | None]
