"""The BYOK wizard's gates: which tier and deployment see it, which roles may use it, caching.

Every step is driven as htmx would drive it (``HX-Request`` plus the CSRF header) and, where
it matters, as a plain form post (the full-page fallback); see tests/support/wizard.py.
"""

from __future__ import annotations

import json

import pytest

from tests.support.html import by_testid, feedback, parse_html
from tests.support.web import PASSWORD, csrf_token
from tests.support.wizard import (
    FRAGMENT,
    PAGE,
    POST_ROUTES,
    Wizard,
    add_org,
    app_config,  # noqa: F401 - fixture: the wizard's settings
    byok_forms,
    events,
    key_by_fp,
    new_key,
    org_keys,
    sign_in,
)

# --- tiers and eligibility ------------------------------------------------------------------

TIER_MATRIX = [
    # (deployment, tier, tier shown, BYOK section, BYOK required)
    ("shared", "community", "Community (shared)", False, False),
    ("shared", "org_community", "Community (shared)", True, False),
    ("shared", "dedicated", "Dedicated (isolated)", True, True),
    ("shared", "on_prem", "Dedicated (isolated)", True, True),
    ("dedicated", "community", "Dedicated (isolated)", True, True),
    ("dedicated", "org_community", "Dedicated (isolated)", True, True),
    ("on_prem", "org_community", "Dedicated (isolated)", True, True),
    ("on_prem", "on_prem", "Dedicated (isolated)", True, True),
]


@pytest.mark.parametrize(
    ("deployment", "tier", "shown", "has_byok", "required"),
    TIER_MATRIX,
    ids=[f"{d}-{t}" for d, t, *_ in TIER_MATRIX],
)
def test_compliance_page_shows_tier_per_deployment_mode_and_byok_only_when_eligible(
    app, password_hash, deployment, tier, shown, has_byok, required
):
    from portal.models import TIER_LABELS

    org = add_org(app, password_hash, tier)
    html = sign_in(app, org["admin"]).page()
    assert by_testid(html, "deployment-tier") == shown
    assert by_testid(html, "deployment-mode") == deployment
    assert TIER_LABELS[tier] in html
    tree = parse_html(html)
    assert (tree.find(id="byok") is not None) == has_byok
    assert ("BYOK Configuration" in html) == has_byok
    assert (tree.find(id="byok-upgrade") is not None) == (not has_byok)
    if has_byok:
        assert by_testid(html, "byok-state").startswith("Off")
        assert ("required for this deployment" in html) == required
        assert f"{PAGE}/byok/generate" in byok_forms(html)


def test_community_account_sees_explanation_and_upgrade_prompt_to_sales_url(app, password_hash):
    org = add_org(app, password_hash, "community")
    wizard = sign_in(app, org["admin"])
    for html in (
        wizard.page(),
        wizard.client.get(FRAGMENT, headers={"HX-Request": "true"}).get_data(as_text=True),
    ):
        upgrade = parse_html(html).find(id="byok-upgrade")
        assert upgrade is not None
        assert "cannot bring their own key" in upgrade.text()
        links = [n.attrs["href"] for n in upgrade.walk() if n.tag == "a"]
        assert links == ["https://sales.example.test/upgrade?from=portal"]
        assert "BYOK Configuration" not in html
        assert byok_forms(html) == []


def test_community_account_cannot_generate_test_or_enable_by_posting(app, password_hash):
    org = add_org(app, password_hash, "community")
    wizard = sign_in(app, org["admin"])
    _, text, fp = new_key()
    generated = wizard.post("generate")
    assert generated.status_code == 403
    assert "not available for Community" in generated.get_data(as_text=True)
    tested = wizard.test_key(text)
    assert tested.status_code == 422
    assert "not available for Community" in feedback(
        tested.get_data(as_text=True), "enable", "form"
    )
    enabled = wizard.enable(text, tested=fp)
    assert enabled.status_code == 422
    assert {k.origin for k in org_keys(app, org["id"])} == {"platform"}
    assert events(app, "BYOK.key_generated", outcome="success") == []
    refused = events(app, "BYOK.key_generated", org["id"], outcome="failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "not_eligible"}]


# --- roles and sign-in ----------------------------------------------------------------------

ROLE_MATRIX = {"admin_a": True, "auditor_a": False, "member_a": False, "support": False}


@pytest.mark.parametrize("who", list(ROLE_MATRIX))
@pytest.mark.parametrize("path", [PAGE, FRAGMENT])
def test_role_matrix_over_compliance_pages(app, login_as, who, path):
    client = login_as(who)
    status = client.get(path, headers={"HX-Request": "true"}).status_code
    assert status == (200 if who in ("admin_a", "auditor_a") else 403)


@pytest.mark.parametrize("who", ["auditor_a", "member_a", "support"])
@pytest.mark.parametrize("action", POST_ROUTES)
def test_only_admins_may_post_any_key_operation(app, login_as, orgs, who, action):
    client = login_as(who)
    wizard = Wizard(app, client, token_path="/")
    _, text, fp = new_key()
    data = {
        "key": text,
        "tested_fingerprint": fp,
        "password": PASSWORD,
        "confirm_slug": orgs["a"]["slug"],
        "acknowledge": "y",
    }
    for htmx in (True, False):
        response = wizard.post(action, data, htmx=htmx)
        assert response.status_code == 403, response.get_data(as_text=True)
        assert text not in response.get_data(as_text=True)
    endpoint = "compliance." + ("declare_lost" if action == "lost" else action)
    denied = events(app, "auth.access_denied")
    assert [json.loads(e.details)["endpoint"] for e in denied] == [endpoint, endpoint]
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]
    assert events(app, "BYOK.key_test") == []


def test_admin_may_post_every_key_operation(app, admin, orgs):
    """The positive half of the role matrix: an admin is never refused with 403."""
    _, text, fp = new_key()
    data = {"key": text, "tested_fingerprint": fp, "password": PASSWORD}
    for action in POST_ROUTES:
        data["confirm_slug"] = orgs["a"]["slug"]
        response = admin.post(action, data)
        assert response.status_code in (200, 422), (action, response.status_code)


def test_auditor_sees_the_status_read_only_with_no_key_forms(app, admin, orgs):
    _, text, _ = new_key()
    fp = admin.enable_ok(text)
    admin_html = admin.page()
    assert {f"{PAGE}/byok/disable", f"{PAGE}/byok/lost", f"{PAGE}/byok/revoke"} <= set(
        byok_forms(admin_html)
    )
    auditor = sign_in(app, orgs["users"]["auditor_a"])
    for html in (
        auditor.page(),
        auditor.client.get(FRAGMENT, headers={"HX-Request": "true"}).get_data(as_text=True),
    ):
        assert by_testid(html, "active-fingerprint") == fp
        assert by_testid(html, "byok-state") == "On"
        assert byok_forms(html) == []
        assert parse_html(html).find(id="enable-key") is None
        assert "key operations are for organisation admins" in html


@pytest.mark.parametrize("path", [PAGE, FRAGMENT])
def test_signed_out_visitor_is_sent_to_login(client, path):
    plain = client.get(path)
    assert plain.status_code == 302
    assert plain.headers["Location"].startswith("/login")
    hx = client.get(path, headers={"HX-Request": "true"})
    assert hx.status_code == 401
    assert hx.headers["HX-Redirect"].startswith("/login")


@pytest.mark.parametrize("action", POST_ROUTES)
def test_signed_out_post_is_sent_to_login_and_changes_nothing(app, client, action):
    token = csrf_token(client, "/login")
    _, text, _ = new_key()
    plain = client.post(f"{PAGE}/byok/{action}", data={"key": text, "csrf_token": token})
    assert plain.status_code == 302
    assert plain.headers["Location"].startswith("/login")
    hx = client.post(
        f"{PAGE}/byok/{action}",
        data={"key": text},
        headers={"HX-Request": "true", "X-CSRFToken": token},
    )
    assert hx.status_code == 401
    assert hx.headers["HX-Redirect"].startswith("/login")
    assert events(app, "BYOK.key_test") == []
    assert events(app, "BYOK.key_generated") == []


def test_admin_of_another_organisation_sees_and_changes_only_its_own_keys(app, admin, orgs):
    key_a, text_a, _ = new_key()
    fp_a = admin.enable_ok(text_a)
    other = sign_in(app, orgs["users"]["admin_b"])
    html = other.page()
    assert fp_a not in html
    assert by_testid(html, "byok-state").startswith("Off")
    # Org B cannot restore (or otherwise claim) org A's key: it never had it.
    restored = other.post("restore", {"key": text_a, "password": PASSWORD})
    assert restored.status_code == 422
    assert "No key of your organisation has fingerprint" in feedback(
        restored.get_data(as_text=True), "restore", "key"
    )
    # Org B's admin enabling, then disabling, its own key leaves org A's untouched.
    _, text_b, _ = new_key()
    other.enable_ok(text_b)
    assert other.confirm("disable", orgs["b"]["slug"], acknowledge="y").status_code == 200
    assert key_by_fp(app, orgs["a"]["id"], fp_a).state == "active"
    # Org A's slug does not confirm anything for org B.
    _, text_c, _ = new_key()
    other.enable_ok(text_c)
    wrong = other.confirm("revoke", orgs["a"]["slug"])
    assert wrong.status_code == 422
    assert orgs["b"]["slug"] in feedback(wrong.get_data(as_text=True), "revoke", "confirm_slug")
    assert key_by_fp(app, orgs["a"]["id"], fp_a).sealed is not None


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
@pytest.mark.parametrize("action", POST_ROUTES)
def test_every_post_without_csrf_token_is_refused_with_400(app, admin, orgs, action, htmx):
    _, text, fp = new_key()
    data = {
        "key": text,
        "tested_fingerprint": fp,
        "password": PASSWORD,
        "confirm_slug": orgs["a"]["slug"],
        "acknowledge": "y",
    }
    response = admin.post(action, data, htmx=htmx, csrf=False)
    assert response.status_code == 400
    assert text not in response.get_data(as_text=True)
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]
    assert events(app, "BYOK.key_test") == [] and events(app, "BYOK.key_generated") == []


# --- caching --------------------------------------------------------------------------------


def test_page_fragments_and_answers_are_never_cached(app, admin):
    _, text, _ = new_key()
    responses = {
        "page": admin.client.get(PAGE),
        "fragment": admin.client.get(FRAGMENT, headers={"HX-Request": "true"}),
        "generate": admin.post("generate"),
        "generate-plain": admin.post("generate", htmx=False),
        "test": admin.test_key(text),
        "test-refused": admin.test_key("abc"),
        "enable-refused": admin.enable(text, tested=""),
        "enable": admin.enable(text),
    }
    for name, response in responses.items():
        assert response.status_code in (200, 422), name
        assert "no-store" in response.headers.get("Cache-Control", ""), name
