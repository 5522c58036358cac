"""Bearer tokens resolved from process memory: hash -> (token id, organisation, name).

A token is looked up in the database once, then kept for at most ``TOKEN_SECONDS`` under the
generation ``byok:tokengen``, which a commit that revokes, changes or deletes any token bumps
(portal/keys/keyring_cache.py): a revoked token is refused on its next request on every process
(within about half a second). Only the token's hash is a key here, never the token itself; when
Redis does not answer every request looks its token up in the database as before.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy.orm import Session

from portal.chat import service
from portal.chat.models import ApiToken
from portal.keys import keyring_cache

TOKENGEN = "byok:tokengen"
NAMES = (TOKENGEN,)
CACHE_NAME = "tokens"
# A safety net only: revocation ends a kept token through the generation, not through this.
TOKEN_SECONDS = 60.0


@dataclass(frozen=True)
class TokenIdentity:
    """Who a live token is, as requests and audit events need it (no secret)."""

    actor_type: ClassVar[str] = ApiToken.actor_type

    id: uuid.UUID
    company_id: uuid.UUID
    name: str


def resolve(session: Session, token: str) -> TokenIdentity | None:
    """Return the identity of the live token presented, from memory or the database."""
    if not token.startswith(service.TOKEN_PREFIX):
        return None
    cache = keyring_cache.cache_for(CACHE_NAME)
    digest = service.hash_token(token)
    if cache is not None:
        kept = cache.get(digest)
        if kept is not None:
            return kept
    # Read before the row, so a revocation committed after this read still ends what is kept;
    # and only kept when the lookup began the transaction (its snapshot is not older).
    generation = cache.generation(NAMES) if cache is not None else None
    fresh = not session.in_transaction()
    row = service.find_token(session, token)
    if row is None:
        return None
    identity = TokenIdentity(row.id, row.company_id, row.name)
    if cache is not None and generation is not None and fresh and not _changing_tokens(session):
        cache.put(digest, identity, NAMES, generation, TOKEN_SECONDS)
    return identity


def _changing_tokens(session: Session) -> bool:
    """Tell whether the session holds token changes it has not committed yet."""
    pending = (*session.new, *session.dirty, *session.deleted)
    return keyring_cache.marked(session, NAMES) or any(isinstance(o, ApiToken) for o in pending)


keyring_cache.watch(ApiToken, ApiToken.__tablename__, lambda _row: TOKENGEN, TOKENGEN)
