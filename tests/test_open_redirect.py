"""After sign-in the portal goes only to its own pages: ``next`` cannot leave the site."""

from __future__ import annotations

import pytest

from tests.support.web import PASSWORD, csrf_token

# Each of these, in a browser's Location, leaves the site, runs script, or is not a plain
# path inside the portal.
BYPASSES = [
    "//evil.example",
    "////evil.example",
    "/////evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/%2F/evil.example",
    "/%2f%2fevil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%255C%255Cevil.example",
    "https://evil.example",
    "http:evil.example",
    "http:/evil.example",
    "HTTPS://evil.example/",
    "evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,x",
    "/%0d%0aSet-Cookie:x=1",
    "/\r\nLocation: //evil.example",
    "%0d%0a//evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "\t//evil.example",
    " //evil.example",
    "/..//evil.example",
    "/../evil.example",
    "/%2e%2e//evil.example",
    "/./\\evil.example",
    "/\uff0f/evil.example",
    "/\u2215\u2215evil.example",
    "\uff0f\uff0fevil.example",
    "/\u3002evil.example",
    "/\x00/evil.example",
    "/\x7f/evil.example",
]

GOOD = ["/settings/compliance", "/audit?type=auth.login&page=2", "/rotations"]


def _post_login(client, email: str, target: str, **kwargs):
    """Sign in through the form with ``next`` set to ``target``."""
    token = csrf_token(client)
    return client.post(
        "/login",
        query_string={"next": target},
        data={"email": email, "password": PASSWORD, "csrf_token": token},
        **kwargs,
    )


@pytest.mark.parametrize("target", BYPASSES)
def test_sign_in_never_redirects_off_site(client, orgs, target):
    response = _post_login(client, orgs["users"]["admin_a"], target)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize("target", BYPASSES)
def test_signed_in_login_page_never_redirects_off_site(login_as, target):
    client = login_as("admin_a")
    response = client.get("/login", query_string={"next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize("target", GOOD)
def test_sign_in_goes_to_a_page_of_the_portal(client, orgs, target):
    response = _post_login(client, orgs["users"]["admin_a"], target)
    assert response.headers["Location"] == target
    assert client.get("/login", query_string={"next": target}).headers["Location"] == target


@pytest.fixture
def proxied_app(app_config, request):
    """The portal behind one trusted proxy that serves it under /byok."""
    app_config["TRUSTED_PROXY_COUNT"] = 1
    # The test client's cookie jar sees /login, not /byok/login.
    app_config["SESSION_COOKIE_PATH"] = "/"
    app = request.getfixturevalue("app")
    return app, request.getfixturevalue("orgs")


PREFIXED = {"X-Forwarded-Prefix": "/byok", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("target", [*BYPASSES, "/byok//evil.example"])
def test_behind_a_prefix_sign_in_stays_under_it(proxied_app, target):
    app, orgs = proxied_app
    client = app.test_client()
    token = csrf_token(client, headers=PREFIXED)
    response = client.post(
        "/login",
        query_string={"next": target},
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
        headers={**PREFIXED, "Referer": "https://localhost/byok/login"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/byok/"
    again = client.get("/login", query_string={"next": target}, headers=PREFIXED)
    assert again.headers["Location"] == "/byok/"


def test_behind_a_prefix_a_portal_page_is_kept_under_it(proxied_app):
    app, orgs = proxied_app
    client = app.test_client()
    token = csrf_token(client, headers=PREFIXED)
    response = client.post(
        "/login?next=/settings/compliance",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
        headers={**PREFIXED, "Referer": "https://localhost/byok/login"},
    )
    assert response.headers["Location"] == "/byok/settings/compliance"
