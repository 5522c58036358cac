"""Rate limits count the right thing: a key-operation allowance belongs to the user."""

from __future__ import annotations

import redis

from tests.support.web import csrf_token, login


def _test_key(client) -> int:
    """Press Test Key (htmx) with a key that is not one; return the status."""
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, "/settings/compliance")}
    return client.post(
        "/settings/compliance/byok/test", data={"key": "x"}, headers=headers
    ).status_code


def _sign_out(client) -> None:
    """Sign out through the real form."""
    token = csrf_token(client, "/logout")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302


def test_signing_out_and_in_does_not_reset_the_key_operation_limit(app, client, orgs):
    app.config["RATELIMIT_KEY_OPERATIONS"] = "2/minute"
    email = orgs["users"]["admin_a"]
    assert login(client, email).status_code == 302
    assert [_test_key(client) for _ in range(3)] == [422, 422, 429]
    _sign_out(client)
    assert login(client, email).status_code == 302
    assert _test_key(client) == 429
    # Another admin still has an allowance of their own.
    other = app.test_client()
    assert login(other, orgs["users"]["admin_b"]).status_code == 302
    assert _test_key(other) == 422


def test_no_session_token_or_cookie_reaches_redis_key_names(app, client, orgs):
    from sqlalchemy import select

    from portal.db import get_session
    from portal.models import User

    email = orgs["users"]["admin_a"]
    assert login(client, email).status_code == 302
    assert _test_key(client) == 422
    cookie = client.get_cookie("session").value
    with app.app_context():
        user = get_session().scalar(select(User).where(User.email == email))
        token, user_id = user.session_token, str(user.id)
    names = [k.decode() for k in redis.Redis.from_url(app.config["REDIS_URL"]).keys("*")]
    limit_keys = [n for n in names if "key-ops" in n]
    assert limit_keys and all(user_id in n for n in limit_keys), names
    payload = max(cookie.split("."), key=len)
    for secret in (token, cookie, payload):
        assert not any(secret in n for n in names), (secret, names)


def test_the_key_operation_allowance_is_shared_by_every_key_operation(app, client, orgs):
    app.config["RATELIMIT_KEY_OPERATIONS"] = "2/minute"
    assert login(client, orgs["users"]["admin_a"]).status_code == 302
    assert [_test_key(client) for _ in range(2)] == [422, 422]
    # Test Key used the allowance up: Restore (another key operation) is refused too.
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, "/settings/compliance")}
    restore = client.post("/settings/compliance/byok/restore", data={"key": "x"}, headers=headers)
    assert restore.status_code == 429
