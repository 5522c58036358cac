"""Security of every GET response and of sessions, over the walk of ``app.url_map``.

- Security headers on every GET response; ``no-store`` where key state is shown.
- A spoofed ``X-Forwarded-For`` neither forges audit addresses nor escapes rate limits.
- A cookie copied before logout is refused afterwards.

There is no password-change feature (no page, no command), so "a password change invalidates
existing sessions" cannot be tested yet; logout's server-side invalidation is.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.support.walk import (
    NO_STORE_PREFIXES,
    PUBLIC,
    Target,
    events_since,
    last_event_id,
    send,
    session_token,
    targets,
)
from tests.support.web import PASSWORD, csrf_token, login

# --- 4. Headers on every GET response --------------------------------------------------------


def header_problems(target: Target, response, who: str) -> list[str]:
    """What is wrong with one response's security headers."""
    problems = []
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    directives = {d.split()[0]: d for d in (p.strip() for p in csp.split(";")) if d}
    if "unsafe-inline" in csp or "unsafe-eval" in csp:
        problems.append("CSP allows unsafe-inline/unsafe-eval")
    if directives.get("frame-ancestors") != "frame-ancestors 'none'":
        problems.append(f"CSP frame-ancestors is {directives.get('frame-ancestors')!r}")
    if directives.get("script-src", "script-src 'self'").split()[1:] != ["'self'"]:
        problems.append(f"CSP script-src is {directives.get('script-src')!r}")
    if "default-src" not in directives or "object-src" not in directives:
        problems.append("CSP lacks default-src or object-src")
    if headers.get("X-Content-Type-Options") != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    policy = headers.get("Referrer-Policy")
    if policy not in {
        "same-origin",
        "no-referrer",
        "strict-origin",
        "strict-origin-when-cross-origin",
    }:
        problems.append(f"Referrer-Policy is {policy!r}")
    vary = {v.strip().lower() for v in headers.get("Vary", "").split(",")}
    if "cookie" not in vary:
        problems.append(f"Vary is {headers.get('Vary')!r}")
    if target.url.startswith(NO_STORE_PREFIXES) and "no-store" not in headers.get(
        "Cache-Control", ""
    ):
        problems.append(f"Cache-Control is {headers.get('Cache-Control')!r}, not no-store")
    return [f"{who}: {target} ({response.status_code}): {p}" for p in problems]


@pytest.mark.parametrize("who", ["signed_out", "admin_a", "member_a", "support", "admin_b"])
def test_security_headers_on_every_get_response(world, who):
    client = world.client(who)
    problems = []
    for target in targets(world, methods={"GET"}):
        for htmx in (False, True):
            response = send(client, target, htmx=htmx)
            problems += header_problems(target, response, who)
            if response.status_code == 200 and target.endpoint not in PUBLIC:
                vary = response.headers.get("Vary", "").lower()
                if "hx-request" not in vary:
                    problems.append(f"{who}: {target}: Vary lacks HX-Request")
    assert not problems, "\n".join(problems)


# --- 5. Spoofed X-Forwarded-For --------------------------------------------------------------


def failed_login_ip(app: Flask, client: FlaskClient, email: str, **kwargs) -> str | None:
    """Fail a sign-in and return the source address its audit event recorded."""
    token = csrf_token(client)
    mark = last_event_id(app)
    response = client.post(
        "/login", data={"email": email, "password": "wrong", "csrf_token": token}, **kwargs
    )
    assert response.status_code == 401
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, source_ip FROM audit_events WHERE id > :m"), {"m": mark}
        ).all()
    # One event in the platform chain, one in the organisation's chain, from one address.
    assert [r[0] for r in rows] == ["auth.login_failed", "auth.login_failed"]
    assert rows[0][1] == rows[1][1]
    return rows[0][1]


@pytest.fixture
def orgs_for_proxy(app_config, request):
    """The app behind one trusted proxy (set before the app is built), with its users."""
    app_config["TRUSTED_PROXY_COUNT"] = 1
    app = request.getfixturevalue("app")
    orgs = request.getfixturevalue("orgs")
    return app, orgs["users"]


def test_without_trusted_proxies_a_spoofed_forwarded_for_is_ignored(app, orgs):
    assert app.config["TRUSTED_PROXY_COUNT"] == 0
    client = app.test_client()
    ip = failed_login_ip(
        app,
        client,
        orgs["users"]["admin_a"],
        headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"},
        environ_base={"REMOTE_ADDR": "192.0.2.10"},
    )
    assert ip == "192.0.2.10"


def test_behind_one_proxy_only_the_last_hop_is_trusted(orgs_for_proxy):
    app, users = orgs_for_proxy
    client = app.test_client()
    ip = failed_login_ip(
        app,
        client,
        users["admin_a"],
        headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.7"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert ip == "10.0.0.7"


def _attempts(app: Flask, forwarded: list[str], remote: str = "127.0.0.1") -> list[int]:
    """Failed sign-ins, one per X-Forwarded-For value, each for a different account."""
    statuses = []
    for i, xff in enumerate(forwarded):
        client = app.test_client()
        token = csrf_token(client)
        statuses.append(
            client.post(
                "/login",
                data={"email": f"nobody{i}@x.example", "password": "x", "csrf_token": token},
                headers={"X-Forwarded-For": xff},
                environ_base={"REMOTE_ADDR": remote},
            ).status_code
        )
    return statuses


def test_spoofing_forwarded_for_does_not_escape_the_per_address_limit(app):
    app.config["RATELIMIT_LOGIN_ADDRESS"] = "3/minute"
    spoofed = [f"6.6.6.{i}" for i in range(5)]
    assert _attempts(app, spoofed, remote="192.0.2.10") == [401, 401, 401, 429, 429]
    # Another real address still has its own allowance.
    assert _attempts(app, ["6.6.6.99"], remote="192.0.2.11") == [401]


def test_behind_a_proxy_the_limit_counts_per_trusted_address(orgs_for_proxy):
    app, _ = orgs_for_proxy
    app.config["RATELIMIT_LOGIN_ADDRESS"] = "3/minute"
    # The client forges the first entries; the proxy's own (last) entry is what counts.
    forged = [f"6.6.6.{i}, 10.0.0.7" for i in range(5)]
    assert _attempts(app, forged) == [401, 401, 401, 429, 429]
    # Different real clients behind the same proxy are counted separately.
    assert _attempts(app, [f"10.0.0.{i}" for i in range(20, 24)]) == [401] * 4


# --- 6. Replayed cookies ---------------------------------------------------------------------


def _session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _replay(app: Flask, cookie: str, path: str = "/settings/compliance"):
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    return thief.get(path)


def test_a_cookie_copied_before_logout_is_refused_afterwards(app, login_as):
    client = login_as("admin_a")
    copied = _session_cookie(client)
    assert _replay(app, copied).status_code == 200  # the copy works while the session lives
    token = session_token(client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    replayed = _replay(app, copied)
    assert replayed.status_code == 302 and replayed.headers["Location"].startswith("/login")
    # htmx and the API get no further with it.
    thief = app.test_client()
    thief.set_cookie("session", copied)
    assert thief.get("/rotations", headers={"HX-Request": "true"}).status_code == 401
    assert thief.get("/api/v1/conversations").status_code == 401


def test_logout_ends_every_other_session_of_the_user(app, login_as, orgs):
    client = login_as("admin_a")
    elsewhere = app.test_client()
    assert login(elsewhere, orgs["users"]["admin_a"], PASSWORD).status_code == 302
    assert elsewhere.get("/settings/compliance").status_code == 200
    assert client.post("/logout", data={"csrf_token": session_token(client)}).status_code == 302
    assert elsewhere.get("/settings/compliance").status_code == 302


def test_a_replayed_cookie_cannot_post_either(app, login_as):
    client = login_as("admin_a")
    token = session_token(client)
    copied = _session_cookie(client)  # with the CSRF secret: only the sign-in may stop it
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", copied)
    mark = last_event_id(app)
    response = thief.post(
        "/settings/compliance/byok/generate", data={"csrf_token": token}, headers={}
    )
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert events_since(app, mark) == []
