"""Data keys wrapped by the customer's key service: wrapping a new one, unwrapping a stored one.

An external key row holds only the wrapped data key (``sealed``), the provider (``custody``)
and the key reference (``key_ref``, plus ``role_arn`` for AWS). The unwrapped data key lives
in process memory only, in the key service client's cache (portal/keys/custody/client.py).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from portal import crypto
from portal.keys import custody as registry
from portal.keys.custody import (
    CustodyError,
    KeyAccessRevoked,
    KeyRef,
    KeyServiceClient,
    KeyServiceUnreachable,
)
from portal.keys.custody.keyservice import wrap_context


class ExternalRow(Protocol):
    """A stored key row as far as wrapping cares."""

    company_id: uuid.UUID
    key_id: str
    custody: str | None
    key_ref: str | None
    role_arn: str | None
    sealed: bytes | None


def ref_for(company_id: uuid.UUID, provider: str, ref: str, role_arn: str | None) -> KeyRef:
    """The key reference of an organisation (a role is assumed with ExternalId = its id)."""
    return KeyRef(provider, ref, role_arn or None, str(company_id) if role_arn else None)


def row_ref(row: ExternalRow) -> KeyRef:
    """The key reference a stored external key row names."""
    return ref_for(row.company_id, row.custody or "", row.key_ref or "", row.role_arn)


def client_for(provider: str | None) -> KeyServiceClient:
    """The started client of a provider, or CustodyError saying why this installation lacks it."""
    client = registry.key_service(provider)
    if client is not None:
        return client
    problem = registry.service_problems().get(provider or "")
    if problem:
        raise CustodyError(f"key service {provider} is configured but not running: {problem}")
    raise CustodyError(
        f"key service {provider} is not configured on this installation "
        "(see the README's configuration table)"
    )


def unwrap_row(row: ExternalRow) -> bytes:
    """Return the row's data key, from the cache or the customer's service (or raise)."""
    if row.sealed is None:
        raise CustodyError("no wrapped copy is stored")
    client = client_for(row.custody)
    return client.unwrap(row_ref(row), row.sealed, wrap_context(row.company_id, row.key_id))


def wrap_new(company_id: uuid.UUID, ref: KeyRef) -> tuple[bytes, str, bytes]:
    """Generate a data key and have ref's key wrap it: (data key, its key id hex, wrapped)."""
    client = client_for(ref.provider)
    data_key = crypto.generate_key()
    key_id_hex = crypto.key_id(data_key).hex()
    wrapped = client.wrap(ref, data_key, wrap_context(company_id, key_id_hex))
    return data_key, key_id_hex, wrapped


def rewrap_row(row: ExternalRow, new_ref: KeyRef) -> bytes:
    """Return the row's data key wrapped under new_ref (the data key itself is unchanged)."""
    if row.sealed is None:
        raise CustodyError("no wrapped copy is stored")
    client = client_for(row.custody)
    if new_ref.provider != row.custody:
        raise CustodyError("a re-wrap stays within one key service; moving is a full re-encryption")
    return client.rewrap(
        row_ref(row), row.sealed, wrap_context(row.company_id, row.key_id), new_ref
    )


def service_state(row: ExternalRow) -> dict[str, object]:
    """Ask the customer's service about the row's key now: what the status panel shows.

    ``state`` is reachable, unreachable or denied; with the key's version, the last
    successful call of this process and when the cached data key expires.
    """
    try:
        client = client_for(row.custody)
    except CustodyError as exc:
        return {"state": "unreachable", "error": str(exc), "label": row.custody, "version": None}
    ref = row_ref(row)
    state, version, error = "reachable", None, None
    try:
        version = client.describe(ref).version
    except KeyServiceUnreachable as exc:
        state, error = "unreachable", str(exc)
    except KeyAccessRevoked as exc:
        state, error = "denied", str(exc)
    except CustodyError as exc:
        error = str(exc)
    health = client.health()
    expires = (
        client.cached_until(ref, row.sealed, wrap_context(row.company_id, row.key_id))
        if row.sealed is not None
        else None
    )
    return {
        "state": state,
        "label": client.label,
        "ref_label": client.ref_label,
        "version": version,
        "error": error,
        "last_success": health.last_success.isoformat() if health.last_success else None,
        "cache_expires": expires.isoformat() if expires else None,
        "cache_seconds": client.cache_seconds,
    }
