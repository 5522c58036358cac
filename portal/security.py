"""Hardening of every response: security headers, session lifetimes, rate limits, 500s."""

from __future__ import annotations

import logging
import math
import time
import uuid

from flask import Flask, g, jsonify, redirect, render_template, request, session, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user, logout_user

from portal.htmx import hx_redirect, is_htmx

log = logging.getLogger("portal.errors")

# No inline script, no eval, nothing from elsewhere: htmx runs with allowEval off.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)

# While Redis is unreachable the limits are counted in each process's memory (with a
# warning in the log) instead of refusing every request; they return to Redis once it answers.
limiter = Limiter(
    key_func=get_remote_address,
    headers_enabled=True,
    strategy="fixed-window",
    in_memory_fallback_enabled=True,
    swallow_errors=True,
)


def init_app(app: Flask) -> None:
    """Install headers, session lifetimes, rate limiting and the 500 handler."""
    app.after_request(_headers)
    # Registered before the limiter's own hook, so this runs after it has set its headers.
    app.after_request(_retry_after)
    app.before_request(_session_lifetime)
    app.register_error_handler(Exception, _internal_error)
    app.config.setdefault("RATELIMIT_STORAGE_URI", _storage_uri(app))
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # A Redis that does not answer must not hold a request for long.
    app.config.setdefault(
        "RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 2, "socket_timeout": 2}
    )
    limiter.init_app(app)
    # One limiter serves every app of a process (tests build many): each starts on its Redis.
    limiter._storage_dead = False


def _storage_uri(app: Flask) -> str:
    """Rate-limit counters live in the Redis the portal already uses (started on demand)."""
    from pathlib import Path

    from portal.redis_conn import embedded_url

    url = app.config["REDIS_URL"] or embedded_url(Path(app.config["BYOK_HOME"]))
    return "redis+unix://" + url.removeprefix("unix://") if url.startswith("unix://") else url


def _headers(response):
    """Security headers on every response."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    return response


def retry_after_seconds() -> int:
    """Whole seconds until the breached rate limit lets this client in again, at least 1.

    Rounded up: a client that waits exactly this long is not refused again.
    """
    if "retry_after" not in g:
        try:
            current = limiter.current_limit
            reset_at = current.reset_at if current is not None else None
        except Exception:  # noqa: BLE001 - the storage went away; a minute is a safe guess
            reset_at = None
        wait = 60 if reset_at is None else math.ceil(reset_at - time.time())
        g.retry_after = max(1, wait)
    return g.retry_after


def _retry_after(response):
    """Send Retry-After only when a request is refused for now (429, 503), never as 0."""
    if response.status_code == 429:
        if "retry_after" not in g and response.headers.get("X-RateLimit-Reset", "").isdigit():
            reset_at = int(response.headers["X-RateLimit-Reset"])
            g.retry_after = max(1, math.ceil(reset_at - time.time()))
        response.headers["Retry-After"] = str(retry_after_seconds())
    elif response.status_code != 503:
        response.headers.pop("Retry-After", None)
    return response


def _session_lifetime():
    """End sessions that were idle too long or are older than the absolute limit."""
    if not current_user.is_authenticated or request.path.startswith(("/static/", "/api/")):
        return None
    now = time.time()
    started = session.get("auth_at") or now
    seen = session.get("seen_at") or now
    from flask import current_app

    idle = current_app.config["SESSION_IDLE_SECONDS"]
    absolute = current_app.config["SESSION_ABSOLUTE_SECONDS"]
    if now - seen > idle or now - started > absolute:
        logout_user()
        session.clear()
        target = url_for("auth.login", expired=1)
        return hx_redirect(target, status=401) if is_htmx() else redirect(target)
    session["auth_at"] = started
    session["seen_at"] = now
    return None


def _internal_error(error: Exception):
    """Answer an unexpected error without internals; log it under a correlation id."""
    from werkzeug.exceptions import HTTPException

    if isinstance(error, HTTPException):
        from portal.web import _http_error

        return _http_error(error)
    correlation_id = uuid.uuid4().hex[:16]
    log.error(
        "unhandled error %s on %s %s", correlation_id, request.method, request.path, exc_info=error
    )
    message = "Something went wrong. Quote this reference if you contact support."
    if request.path.startswith("/api/"):
        return jsonify(error="internal_error", message=message, correlation_id=correlation_id), 500
    template = "errors/_error.html" if is_htmx() else "errors/error.html"
    html = render_template(
        template, status=500, title="Internal error", message=message, correlation_id=correlation_id
    )
    return html, 500


def _token_key() -> str:
    """Rate-limit key for the data API: the authenticated token's id, else the address.

    Keyed after authentication, so no spelling of the header earns a fresh allowance, and
    an invalid token shares its address's allowance; no token reaches a Redis key name.
    """
    from portal.api.auth import request_token

    row = request_token()
    if row is not None:
        return f"api-token:{row.id}"
    return "api-anon:" + (get_remote_address() or "")


def api_limit(blueprint) -> None:
    """Limit data-API requests per token (once: blueprints outlive any one app)."""
    from flask import current_app

    if getattr(blueprint, "_byok_rate_limited", False):
        return
    limiter.limit(lambda: current_app.config["RATELIMIT_API"], key_func=_token_key)(blueprint)
    blueprint._byok_rate_limited = True
