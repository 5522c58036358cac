"""Small helpers for htmx requests and responses."""

from __future__ import annotations

from flask import Response, request

# htmx stops polling when a response has this status.
HTTP_STOP_POLLING = 286


def is_htmx() -> bool:
    """Tell whether the current request was made by htmx (the header is exactly "true")."""
    return request.headers.get("HX-Request") == "true"


def hx_redirect(location: str, status: int = 200) -> Response:
    """Return an empty response that makes htmx navigate the whole page to ``location``."""
    response = Response(status=status)
    response.headers["HX-Redirect"] = location
    return response


def add_vary(response: Response, *headers: str) -> Response:
    """Add headers to ``Vary`` without duplicating any."""
    for header in headers:
        response.vary.add(header)
    return response
