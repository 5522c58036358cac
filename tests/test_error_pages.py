"""Error pages speak the portal's words, and Retry-After tells a client a wait that works."""

from __future__ import annotations

import re
import time

import redis

from tests.support.web import PASSWORD, csrf_token, login

WERKZEUG_403 = "read-protected or not readable by the server"


def _wait_shown(html: str) -> int:
    """The wait a 429 page asks for, in seconds."""
    match = re.search(r"try again in (\d+) s", html)
    assert match, html
    return int(match.group(1))


def test_forbidden_page_says_why_in_our_words(login_as):
    client = login_as("member_a")
    for headers in ({}, {"HX-Request": "true"}):
        response = client.get("/settings/compliance", headers=headers)
        assert response.status_code == 403
        html = response.get_data(as_text=True)
        assert WERKZEUG_403 not in html
        assert "Your role cannot open this page" in html


def test_sign_in_limit_page_says_how_long_to_wait(app, client, orgs):
    app.config["RATELIMIT_LOGIN_ACCOUNT"] = "2/minute"
    for _ in range(2):
        assert login(client, orgs["users"]["admin_a"], "wrong password").status_code == 401
    limited = login(client, orgs["users"]["admin_a"], PASSWORD)
    assert limited.status_code == 429
    html = limited.get_data(as_text=True)
    assert "per 1 minute" not in html
    assert "Too many sign-in attempts; try again in" in html
    wait = _wait_shown(html)
    assert 1 <= wait <= 61  # Redis counts the window in whole seconds; never less than left
    assert abs(int(limited.headers["Retry-After"]) - wait) <= 1


def _limit_key(app, fragment: str) -> bytes:
    """The one rate-limit counter in Redis whose name contains ``fragment``."""
    conn = redis.Redis.from_url(app.config["REDIS_URL"])
    (key,) = [k for k in conn.keys("LIMITS:*") if fragment.encode() in k]
    return key


def test_retry_after_is_never_zero_when_the_window_ends_within_a_second(app, client, orgs):
    app.config["RATELIMIT_LOGIN_ACCOUNT"] = "2/minute"
    email = orgs["users"]["admin_a"]
    for _ in range(2):
        assert login(client, email, "wrong password").status_code == 401
    token = csrf_token(client)
    conn = redis.Redis.from_url(app.config["REDIS_URL"])
    # The window now ends in 0.4 s: Redis reports its TTL as 0 seconds.
    conn.pexpire(_limit_key(app, "login:" + email), 400)
    started = time.monotonic()
    limited = client.post(
        "/login", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert time.monotonic() - started < 0.4, "too slow to land inside the window"
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert _wait_shown(limited.get_data(as_text=True)) >= 1
    # A client that obeys it is let in.
    time.sleep(int(limited.headers["Retry-After"]))
    assert login(client, email, PASSWORD).status_code == 302


def test_retry_after_is_sent_only_when_a_request_is_refused(app, client, orgs):
    from portal.chat.service import create_token
    from portal.db import get_session

    with app.app_context():
        db = get_session()
        token = create_token(db, orgs["a"]["id"], "t")
        db.commit()
    api = app.test_client().get(
        "/api/v1/conversations", headers={"Authorization": f"Bearer {token}"}
    )
    assert api.status_code == 200 and "Retry-After" not in api.headers
    failed = login(client, orgs["users"]["admin_a"], "wrong password")
    assert failed.status_code == 401 and "Retry-After" not in failed.headers
    assert login(client, orgs["users"]["admin_a"]).status_code == 302
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, "/settings/compliance")}
    refused = client.post("/settings/compliance/byok/test", data={"key": "x"}, headers=headers)
    assert refused.status_code == 422 and "Retry-After" not in refused.headers


def test_limited_key_operations_and_api_calls_say_how_long_to_wait(app, login_as, orgs):
    from portal.chat.service import create_token
    from portal.db import get_session

    app.config["RATELIMIT_KEY_OPERATIONS"] = "1/minute"
    app.config["RATELIMIT_API"] = "1/minute"
    client = login_as("admin_a")
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, "/settings/compliance")}
    codes = []
    for _ in range(2):
        response = client.post("/settings/compliance/byok/test", data={"key": "x"}, headers=headers)
        codes.append(response.status_code)
    assert codes == [422, 429]
    assert "Too many key operations; try again in" in response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) >= 1
    with app.app_context():
        db = get_session()
        token = create_token(db, orgs["a"]["id"], "t")
        db.commit()
    api = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/conversations", headers=auth).status_code == 200
    limited = api.get("/api/v1/conversations", headers=auth)
    assert limited.status_code == 429
    body = limited.get_json()
    assert body["error"] == "too_many_requests"
    assert body["message"].startswith("Too many requests; try again in")
    assert int(limited.headers["Retry-After"]) >= 1
