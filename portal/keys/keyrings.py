"""The organisation keyrings chat data is written and read with (chat's KeyringSource).

The data path keeps keyrings in process memory between requests (portal/keys/keyring_cache.py):
a request normally neither reads the keys table nor unseals a key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app, g, has_app_context
from sqlalchemy.orm import Session

from portal import crypto
from portal.keys import keyring_cache
from portal.keys.custody import CustodyError
from portal.keys.custody.keyservice import wrap_context
from portal.keys.models import OrgKey
from portal.keys.policy import byok_required, check_can_store
from portal.keys.service import (
    USABLE_STATES,
    LoadedKeys,
    check_encrypting,
    load_keys,
    read_keys,
)
from portal.keys.wrapped import client_for, row_ref
from portal.models import Organization

CACHE_NAME = "keyrings"
# cached_until() rounds to whole seconds: this much earlier is never after the client's expiry.
CLIENT_ROUNDING_SECONDS = 1.0


@dataclass(frozen=True)
class DataKeys:
    """What the data path needs of an organisation's keys (no key rows when kept)."""

    keyring: crypto.Keyring
    # Origin of the active key (platform, generated, ...): whether BYOK encrypts new data.
    active_origin: str | None
    # Only when built for this request alone: the rows, to say why a write is refused.
    loaded: LoadedKeys | None = None


class OrgKeyrings:
    """Keyrings from the organisation's stored keys, with the BYOK storage policy applied."""

    def writable(self, session: Session, company_id: uuid.UUID) -> crypto.Keyring:
        """Return the encrypting keyring, refusing where BYOK is required but not enabled.

        Raises ByokRequired where the deployment or tier requires the organisation's own key
        and none is enabled yet, and KeyUnavailable when the encrypting key cannot be unsealed.
        """
        keys = data_keys(session, company_id)
        if keys.keyring.encrypting_key_id is not None and keys.active_origin != "platform":
            return keys.keyring  # the organisation's own key encrypts: nothing to refuse
        org = session.get(Organization, company_id)
        if org is None:
            raise LookupError(f"no organisation with id {company_id}")
        if keys.keyring.encrypting_key_id is None or byok_required(org):
            # A refusal: checked and explained from the session, as every writer (API, demo,
            # imports) obeys it.
            check_can_store(session, org)
            return check_encrypting(keys.loaded or load_keys(session, company_id))
        return keys.keyring

    def readable(self, session: Session, company_id: uuid.UUID) -> crypto.Keyring:
        """Return the keyring of every usable key of the organisation."""
        return data_keys(session, company_id).keyring


KEYRINGS = OrgKeyrings()


def data_keys(session: Session, company_id: uuid.UUID) -> DataKeys:
    """The organisation's keys for the data path: once per request, kept across requests."""
    memo = g.setdefault("data_keys", {}) if has_app_context() else {}
    if company_id not in memo:
        memo[company_id] = _lookup(session, company_id)
    return memo[company_id]


def _lookup(session: Session, company_id: uuid.UUID) -> DataKeys:
    """From this process's cache, else built and kept where that is safe."""
    cache = keyring_cache.cache_for(CACHE_NAME)
    names = keyring_cache.keygen_names(company_id)
    if cache is None or _changing_keys(session, names):
        # This session's own uncommitted key changes (a rotation starting, say) count.
        return _snapshot(load_keys(session, company_id))
    kept = cache.get(company_id)
    if kept is not None:
        return kept
    # The generation is read before the keys: a change committed after this read bumps it
    # again, so what is built now is never kept under a generation newer than its data.
    generation = cache.generation(names)
    if generation is None:
        return _snapshot(load_keys(session, company_id))
    # A transaction of its own: the request's may have a snapshot older than the generation.
    with current_app.extensions["db_sessionmaker"]() as fresh:
        loaded = read_keys(fresh, company_id)
    seconds = lifetime(loaded)
    if seconds > 0:
        cache.put(company_id, _snapshot(loaded, keep=True), names, generation, seconds)
    return _snapshot(loaded)


def _changing_keys(session: Session, names: tuple[str, ...]) -> bool:
    """Tell whether the session holds key changes it has not committed yet."""
    pending = (*session.new, *session.dirty, *session.deleted)
    return keyring_cache.marked(session, names) or any(isinstance(o, OrgKey) for o in pending)


def _snapshot(loaded: LoadedKeys, keep: bool = False) -> DataKeys:
    """The data path's view of loaded keys (without the rows when it is to be kept)."""
    active = next((r for r in loaded.rows if r.state == "active"), None)
    origin = active.origin if active is not None else None
    return DataKeys(loaded.keyring, origin, None if keep else loaded)


def lifetime(loaded: LoadedKeys) -> float:
    """How long a keyring may be kept: not at all while a key failed to open (the next request
    tries again), and a key in a customer's key service no longer than the key service client
    keeps its data key (KMS_CACHE_SECONDS), so that a revocation bites as soon as without."""
    if loaded.reasons or loaded.codes:
        return 0.0
    seconds = keyring_cache.KEYRING_SECONDS
    for row in loaded.rows:
        if row.external and row.state in USABLE_STATES:
            seconds = min(seconds, _client_keeps(row))
    return max(seconds, 0.0)


def _client_keeps(row: OrgKey) -> float:
    """Seconds the key service client still keeps this row's data key (0 when it does not)."""
    try:
        client = client_for(row.custody)
    except CustodyError:
        return 0.0
    if row.sealed is None:
        return 0.0
    until = client.cached_until(row_ref(row), row.sealed, wrap_context(row.company_id, row.key_id))
    if until is None:
        return 0.0
    return (until - datetime.now(UTC)).total_seconds() - CLIENT_ROUNDING_SECONDS
