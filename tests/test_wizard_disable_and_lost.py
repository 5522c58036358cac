"""The BYOK wizard's Disable and Declare Lost steps, and what the data API does after them."""

from __future__ import annotations

import json

import pytest

from portal.chat.models import Message
from tests.support.api import Api
from tests.support.html import by_testid, feedback, parse_html
from tests.support.web import PASSWORD
from tests.support.wizard import (
    PAGE,
    REAUTH_MESSAGE,
    REQUIRED_MESSAGE,
    add_org,
    app_config,  # noqa: F401 - fixture: the wizard's settings
    byok_forms,
    events,
    key_by_fp,
    key_id_of,
    key_row,
    new_key,
    platform_key_ids,
    sign_in,
)

# --- disable --------------------------------------------------------------------------------


def test_disable_requires_reauth_slug_and_acknowledgement_then_new_data_uses_a_platform_key(
    app, admin, orgs
):
    slug = orgs["a"]["slug"]
    api = Api.for_org(app, orgs["a"]["id"])
    key, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "under BYOK")
    html = admin.page()
    assert by_testid(html, "disable-count") == "2"
    admin.stale_reauth()
    steps = [
        ({"confirm_slug": slug, "acknowledge": "y"}, "password", REAUTH_MESSAGE),
        (
            {"confirm_slug": "not-" + slug, "acknowledge": "y", "password": PASSWORD},
            "confirm_slug",
            f"Type the organisation's slug ({slug}) to confirm.",
        ),
        (
            {"confirm_slug": slug},
            "acknowledge",
            "Confirm that your compliance and legal teams were consulted.",
        ),
    ]
    for data, field_name, message in steps:
        response = admin.post("disable", data)
        assert response.status_code == 422, data
        assert feedback(response.get_data(as_text=True), "disable", field_name) == message
        assert by_testid(admin.page(), "byok-state") == "On"
    done = admin.post("disable", {"confirm_slug": f" {slug} ", "acknowledge": "y"})
    assert done.status_code == 200
    assert "BYOK is disabled" in done.get_data(as_text=True)
    assert by_testid(done.get_data(as_text=True), "byok-state").startswith("Off")
    after = api.message(conv, "after disable")
    assert key_id_of(app, Message, after) in platform_key_ids(app, orgs["a"]["id"])
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "decrypt_only"
    assert api.bodies(conv) == ["under BYOK", "after disable"]
    disabled = events(app, "BYOK.disabled", orgs["a"]["id"], outcome="success")
    assert len(disabled) == 1 and json.loads(disabled[0].details)["fingerprint"] == fp
    refused = events(app, "BYOK.disabled", orgs["a"]["id"], outcome="failure")
    assert [json.loads(e.details) for e in refused] == [
        {"reason": "slug_mismatch"},
        {"reason": "not_acknowledged"},
    ]


@pytest.mark.parametrize(
    ("deployment", "tier"),
    [("shared", "dedicated"), ("shared", "on_prem"), ("dedicated", "org_community")],
)
def test_disable_is_refused_with_an_explanation_where_byok_is_required(
    app, password_hash, deployment, tier
):
    org = add_org(app, password_hash, tier)
    wizard = sign_in(app, org["admin"])
    _, text, fp = new_key()
    wizard.enable_ok(text)
    html = wizard.page()
    assert f"{PAGE}/byok/disable" not in byok_forms(html)
    assert "required for this deployment and cannot be disabled" in html
    response = wizard.confirm("disable", org["slug"], acknowledge="y")
    assert response.status_code == 422
    assert REQUIRED_MESSAGE in feedback(response.get_data(as_text=True), "disable", "form")
    assert key_by_fp(app, org["id"], fp).state == "active"


def test_disable_when_byok_is_off_is_refused(admin, orgs):
    response = admin.confirm("disable", orgs["a"]["slug"], acknowledge="y")
    assert response.status_code == 422
    assert "BYOK is not enabled." in feedback(response.get_data(as_text=True), "disable", "form")


# --- declare lost ---------------------------------------------------------------------------


def test_declare_lost_makes_items_unreadable_and_community_org_falls_back_to_platform_key(
    app, admin, orgs
):
    api = Api.for_org(app, orgs["a"]["id"])
    before = api.conversation("before")
    api.message(before, "platform data")
    _, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation("secret plans")
    api.message(conv, "byok data")
    refused = admin.confirm("lost", "wrong-slug")
    assert refused.status_code == 422
    assert "to confirm" in feedback(refused.get_data(as_text=True), "lost", "confirm_slug")
    response = admin.confirm("lost", orgs["a"]["slug"])
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"Key {fp} is declared lost" in html
    assert key_row(html, fp)[1] == "lost"
    assert (
        f"2 items under key {fp} are unreadable" in parse_html(html).find(id="byok-status").text()
    )
    assert parse_html(html).find(id="restore-form") is not None
    assert by_testid(html, "byok-state").startswith("Off")
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.sealed) == ("lost", None)
    read = api.read(conv)
    assert read["status"] == "unreadable"
    assert read["messages"][0]["body"]["status"] == "unreadable"
    assert api.bodies(before) == ["platform data"]
    after = api.message(before, "new platform data")
    assert key_id_of(app, Message, after) in platform_key_ids(app, orgs["a"]["id"])
    lost = events(app, "encryption_key.declared_lost", orgs["a"]["id"], outcome="success")
    assert len(lost) == 1 and json.loads(lost[0].details)["fingerprint"] == fp
    refused = events(app, "encryption_key.declared_lost", orgs["a"]["id"], outcome="failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "slug_mismatch"}]


@pytest.mark.parametrize("tier", ["dedicated", "on_prem"])
def test_declare_lost_on_isolated_tier_blocks_writes_until_a_new_key_is_enabled(
    app, password_hash, tier
):
    org = add_org(app, password_hash, tier)
    wizard = sign_in(app, org["admin"])
    api = Api.for_org(app, org["id"])
    _, text, fp = new_key()
    wizard.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "kept under the lost key")
    response = wizard.confirm("lost", org["slug"])
    assert response.status_code == 200
    refused = api.create_conversation()
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "byok_required"
    assert api.post_message(conv, "x").status_code == 409
    html = wizard.page()
    assert parse_html(html).find(id="enable-form") is not None
    assert parse_html(html).find(id="restore-form") is not None
    _, new_text, new_fp = new_key()
    assert wizard.enable_ok(new_text) == new_fp
    assert api.create_conversation().status_code == 201
    assert api.bodies(conv)[0]["status"] == "unreadable"
