"""With Redis really stopped, the portal keeps serving: rate limits fail open, with a warning."""

from __future__ import annotations

import logging

import pytest

from tests.support.api import make_token as _token
from tests.support.web import csrf_token, login


@pytest.fixture
def app_on_own_redis(own_redis, app_config, services, request):
    """The portal on the test's own Redis (the shared one is left alone)."""
    url, proc = own_redis
    app_config["REDIS_URL"] = url
    app = request.getfixturevalue("app")
    orgs = request.getfixturevalue("orgs")
    yield app, orgs, proc
    # The app fixture empties Redis afterwards: point it at one that is still there.
    app.config["REDIS_URL"] = services.redis_url


def test_requests_are_served_while_redis_is_stopped(app_on_own_redis, caplog):
    app, orgs, proc = app_on_own_redis
    auth = {"Authorization": f"Bearer {_token(app, orgs['a']['id'])}"}
    api = app.test_client()
    created = api.post("/api/v1/conversations", json={"title": "before"}, headers=auth)
    assert created.status_code == 201
    conversation = created.get_json()["id"]
    browser = app.test_client()
    assert login(browser, orgs["users"]["admin_a"]).status_code == 302
    htmx = {"HX-Request": "true", "X-CSRFToken": csrf_token(browser, "/settings/compliance")}

    proc.kill()
    proc.wait(timeout=10)
    caplog.set_level(logging.WARNING)
    answers = {
        "list": api.get("/api/v1/conversations", headers=auth),
        "read": api.get(f"/api/v1/conversations/{conversation}", headers=auth),
        "write": api.post("/api/v1/conversations", json={"title": "during"}, headers=auth),
        "message": api.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"author": "user", "body": "hello"},
            headers=auth,
        ),
        "anonymous": app.test_client().get("/api/v1/conversations"),
        "home": browser.get("/"),
        "compliance": browser.get("/settings/compliance"),
        "audit": browser.get("/settings/audit"),
        "rotations": browser.get("/rotations"),
        "test key": browser.post("/settings/compliance/byok/test", data={"key": "x"}, headers=htmx),
        "healthz": app.test_client().get("/healthz"),
        "login page": app.test_client().get("/login"),
    }
    other = app.test_client()
    token = csrf_token(other)
    answers["sign-in"] = other.post(
        "/login",
        data={"email": orgs["users"]["auditor_a"], "password": "wrong", "csrf_token": token},
    )
    statuses = {name: response.status_code for name, response in answers.items()}
    assert all(code < 500 for name, code in statuses.items() if name != "healthz"), statuses
    assert statuses["list"] == statuses["read"] == 200, statuses
    assert statuses["write"] == statuses["message"] == 201, statuses
    assert statuses["anonymous"] == 401 and statuses["sign-in"] == 401, statuses
    assert statuses["home"] == statuses["compliance"] == statuses["audit"] == 200, statuses
    assert statuses["rotations"] == 200 and statuses["test key"] == 422, statuses
    assert statuses["healthz"] == 503, statuses  # says Redis is down, as it should
    assert not [r for r in caplog.records if r.name == "portal.errors"], "unhandled errors logged"
    assert any(
        r.levelno == logging.WARNING and "rate limit" in r.getMessage().lower()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
