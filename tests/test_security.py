"""Hardening: headers on every route, rate limits, session lifetimes, error pages."""

from __future__ import annotations

import re

import pytest

from tests.support.web import PASSWORD, csrf_token, login

PAGES = [
    "/login",
    "/",
    "/settings/compliance",
    "/settings/audit",
    "/rotations",
    "/healthz",
    "/api/v1/openapi.json",
]


@pytest.mark.parametrize("path", PAGES)
def test_security_headers_on_every_page(login_as, path):
    client = login_as("admin_a")
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Cookie" in response.headers["Vary"]


def test_pages_have_no_inline_scripts(login_as):
    client = login_as("admin_a")
    for path in ("/", "/settings/compliance", "/settings/audit", "/rotations", "/login"):
        html = client.get(path).get_data(as_text=True)
        for tag in re.findall(r"<script[^>]*>", html):
            assert "src=" in tag, f"inline script on {path}: {tag}"
        assert not re.search(r"\son[a-z]+=\"", html), f"inline handler on {path}"


def test_key_state_pages_are_not_cached(login_as):
    client = login_as("admin_a")
    for path in ("/settings/compliance", "/settings/compliance/byok", "/rotations"):
        assert client.get(path).headers["Cache-Control"] == "no-store", path


def test_sign_in_attempts_per_account_are_limited_and_recover(app, client, orgs):
    app.config["RATELIMIT_LOGIN_ACCOUNT"] = "3/minute"
    for _ in range(3):
        assert login(client, orgs["users"]["admin_a"], "wrong password").status_code == 401
    limited = login(client, orgs["users"]["admin_a"], PASSWORD)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    # Another account from the same address is not affected.
    assert login(client, orgs["users"]["auditor_a"], PASSWORD).status_code == 302
    from portal.redis_conn import connect

    connect(app).flushdb()  # the window passing, without waiting a minute
    assert login(app.test_client(), orgs["users"]["admin_a"], PASSWORD).status_code == 302


def test_sign_in_attempts_per_address_are_limited(app, client, orgs):
    app.config["RATELIMIT_LOGIN_ADDRESS"] = "4/minute"
    statuses = [
        login(client, f"nobody{i}@x.example", "wrong password").status_code for i in range(5)
    ]
    assert statuses == [401, 401, 401, 401, 429]


def test_key_operations_are_limited_per_user(app, login_as):
    app.config["RATELIMIT_KEY_OPERATIONS"] = "2/minute"
    client = login_as("admin_a")
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, "/settings/compliance")}
    codes = [
        client.post(
            "/settings/compliance/byok/test", data={"key": "x"}, headers=headers
        ).status_code
        for _ in range(3)
    ]
    assert codes == [422, 422, 429]


def test_api_requests_are_limited_per_token(app, orgs):
    from portal.chat.service import create_token
    from portal.db import get_session

    app.config["RATELIMIT_API"] = "3/minute"
    with app.app_context():
        db = get_session()
        token, other = (
            create_token(db, orgs["a"]["id"], "t"),
            create_token(db, orgs["a"]["id"], "u"),
        )
        db.commit()
    client = app.test_client()
    codes = [
        client.get(
            "/api/v1/conversations", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    assert (
        client.get(
            "/api/v1/conversations", headers={"Authorization": f"Bearer {other}"}
        ).status_code
        == 200
    )


def test_idle_session_expires(app, login_as):
    client = login_as("admin_a")
    with client.session_transaction() as sess:
        sess["seen_at"] -= app.config["SESSION_IDLE_SECONDS"] + 1
    response = client.get("/settings/compliance")
    assert response.status_code == 302 and "expired=1" in response.headers["Location"]
    assert client.get("/settings/compliance").status_code == 302


def test_absolute_session_lifetime_is_enforced_even_when_active(app, login_as):
    client = login_as("admin_a")
    with client.session_transaction() as sess:
        sess["auth_at"] -= app.config["SESSION_ABSOLUTE_SECONDS"] + 1
    response = client.get("/settings/compliance", headers={"HX-Request": "true"})
    assert response.status_code == 401 and "expired=1" in response.headers["HX-Redirect"]


def test_an_internal_error_reveals_nothing_and_logs_a_correlation_id(app, login_as, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals: /etc/passwd")

    client = login_as("admin_a")
    response = client.get("/boom")
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "secret internals" not in html and "Traceback" not in html
    reference = re.search(r"Reference: <code>([0-9a-f]{16})</code>", html).group(1)
    assert any(reference in r.getMessage() for r in caplog.records)


def test_api_errors_are_json_without_internals(app):
    response = app.test_client().get("/api/v1/conversations")
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
