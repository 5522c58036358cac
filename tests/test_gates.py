"""The role and tenant gates on every page, and the navigation that follows them."""

from __future__ import annotations

import pytest

from tests.support.web import random_id

PAGES = ["/", "/settings/compliance", "/settings/audit", "/settings/members", "/rotations"]
# Expected status per role for each page: 200 allowed, 403 forbidden.
MATRIX = {
    "/": {"admin_a": 200, "auditor_a": 200, "member_a": 200, "support": 200},
    "/settings/compliance": {"admin_a": 200, "auditor_a": 200, "member_a": 403, "support": 403},
    "/settings/audit": {"admin_a": 200, "auditor_a": 200, "member_a": 403, "support": 403},
    "/settings/members": {"admin_a": 200, "auditor_a": 200, "member_a": 403, "support": 403},
    "/rotations": {"admin_a": 200, "auditor_a": 403, "member_a": 403, "support": 200},
}


@pytest.mark.parametrize("path", PAGES)
def test_signed_out_request_goes_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


@pytest.mark.parametrize("path", PAGES)
def test_signed_out_htmx_request_gets_hx_redirect(client, path):
    response = client.get(path, headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("path", "who", "status"),
    [(path, who, status) for path, row in MATRIX.items() for who, status in row.items()],
)
def test_role_matrix(login_as, path, who, status):
    client = login_as(who)
    assert client.get(path).status_code == status


@pytest.mark.parametrize("who", ["admin_a", "auditor_a", "member_a", "support"])
def test_navigation_shows_only_pages_the_role_may_open(login_as, who):
    client = login_as(who)
    html = client.get("/").get_data(as_text=True)
    for path, row in MATRIX.items():
        if path == "/":
            continue
        link = f'href="{path}"'
        assert (link in html) == (row[who] == 200), f"{who}: {path}"


def test_object_of_another_organisation_is_404(app, login_as, orgs):
    from sqlalchemy import select

    from portal.db import get_session
    from portal.models import User

    with app.app_context():
        other = get_session().scalar(select(User).where(User.email == orgs["users"]["member_b"]))
        own = get_session().scalar(select(User).where(User.email == orgs["users"]["member_a"]))
    client = login_as("admin_a")
    assert client.get(f"/settings/members/{own.id}").status_code == 200
    assert client.get(f"/settings/members/{other.id}").status_code == 404
    assert client.get(f"/settings/members/{random_id()}").status_code == 404


def test_members_page_lists_only_own_organisation(login_as, orgs):
    html = login_as("admin_a").get("/settings/members").get_data(as_text=True)
    assert orgs["users"]["member_a"] in html
    assert orgs["users"]["member_b"] not in html


def test_compliance_page_shows_tier_and_deployment_mode(login_as):
    html = login_as("admin_a").get("/settings/compliance").get_data(as_text=True)
    assert "Organization Community" in html
    assert 'data-testid="deployment-mode">shared<' in html
