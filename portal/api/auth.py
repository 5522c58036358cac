"""Who calls the data API: the request's bearer token, resolved once per request."""

from __future__ import annotations

from flask import g, request

from portal.api.token_cache import TokenIdentity, resolve
from portal.db import get_session


def bearer_credentials(header: str) -> str | None:
    """Return the token of a ``Bearer`` Authorization header, or None.

    The scheme is case-insensitive (RFC 7235) and surrounding or repeated whitespace is
    tolerated, so every spelling of one token is the same caller.
    """
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def request_token() -> TokenIdentity | None:
    """Return the live token the request presents (the rate limiter and the views share it).

    Resolved from this process's token cache when it can be (portal/api/token_cache.py).
    """
    if "api_token_row" not in g:
        token = bearer_credentials(request.headers.get("Authorization", ""))
        g.api_token_row = resolve(get_session(), token) if token else None
    return g.api_token_row
