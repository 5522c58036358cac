"""The BYOK wizard's Save & Enable step (re-authentication included) and its status panel."""

from __future__ import annotations

import base64
import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal import crypto
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session, utcnow
from portal.keys.models import OrgKey
from portal.models import Organization
from tests.support.api import Api
from tests.support.html import by_testid, feedback, parse_html
from tests.support.web import PASSWORD
from tests.support.wizard import (
    API,
    PAGE,
    REAUTH_MESSAGE,
    WRONG_PASSWORD,
    app_config,  # noqa: F401 - fixture: the wizard's settings
    events,
    key_by_fp,
    key_id_of,
    key_row,
    new_key,
    org_keys,
    platform_key_ids,
    sign_in,
)

# --- save & enable --------------------------------------------------------------------------


def test_save_and_enable_is_refused_without_a_test_of_the_same_key(app, admin, orgs):
    _, text, fp = new_key()
    _, _, other_fp = new_key()
    for tested in ("", other_fp, fp.replace(":", "")):
        response = admin.enable(text, tested=tested)
        assert response.status_code == 422
        assert "Test this key first" in feedback(response.get_data(as_text=True), "enable", "key")
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]
    assert events(app, "BYOK.enabled", outcome="success") == []
    refused = events(app, "BYOK.enabled", orgs["a"]["id"], outcome="failure")
    assert [json.loads(e.details)["reason"] for e in refused] == ["untested"] * 3


def test_save_and_enable_with_a_wrong_password_is_refused_and_audited(app, admin, orgs):
    _, text, _ = new_key()
    response = admin.enable(text, password="not my password")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert feedback(html, "enable", "password") == WRONG_PASSWORD
    assert "not my password" not in html
    failed = events(app, "auth.reauth_failed", orgs["a"]["id"])
    assert [(e.outcome, e.actor_label) for e in failed] == [("failure", orgs["users"]["admin_a"])]
    assert "not my password" not in failed[0].details
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


@pytest.mark.parametrize("password", [None, ""], ids=["missing", "empty"])
def test_save_and_enable_needs_the_password_when_reauth_is_not_fresh(app, admin, orgs, password):
    _, text, _ = new_key()
    response = admin.enable(text, password=password)
    assert response.status_code == 422
    assert feedback(response.get_data(as_text=True), "enable", "password") == REAUTH_MESSAGE
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


def test_wrong_password_keeps_the_tested_key_armed_for_the_retry(app, admin, orgs):
    _, text, fp = new_key()
    admin.test_key(text)
    refused = admin.enable(text, tested=fp, password="mistyped")
    assert refused.status_code == 422
    # htmx swaps this hidden field into the form: what it holds is what the retry submits.
    armed = parse_html(refused.get_data(as_text=True)).find(id="enable-tested")
    retry = admin.enable(text, tested=armed.attrs["value"], password=PASSWORD)
    assert retry.status_code == 200, feedback(retry.get_data(as_text=True), "enable", "key")
    assert by_testid(retry.get_data(as_text=True), "active-fingerprint") == fp


def test_save_and_enable_with_password_enables_and_reauth_stays_fresh_for_a_while(app, admin, orgs):
    key, text, fp = new_key()
    response = admin.enable(text)
    assert response.status_code == 200
    assert response.headers["HX-Retarget"] == "#byok"
    assert response.headers["HX-Reswap"] == "outerHTML"
    html = response.get_data(as_text=True)
    assert parse_html(html).find(id="byok") is not None
    assert f"BYOK is enabled with key {fp}" in html
    assert by_testid(html, "byok-state") == "On"
    assert by_testid(html, "active-fingerprint") == fp
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.origin, row.created_by) == ("active", "imported", "admin@a.example")
    assert row.sealed and key not in row.sealed
    enabled = events(app, "BYOK.enabled", orgs["a"]["id"])
    assert [json.loads(e.details) for e in enabled] == [{"fingerprint": fp, "origin": "imported"}]
    # Within REAUTH_SECONDS the next key operation needs no password.
    assert "confirmed recently" in admin.page()
    disabled = admin.confirm("disable", orgs["a"]["slug"], password=None, acknowledge="y")
    assert disabled.status_code == 200, disabled.get_data(as_text=True)
    assert by_testid(disabled.get_data(as_text=True), "byok-state").startswith("Off")


def test_reauth_expires_after_reauth_seconds(app, admin, orgs):
    _, text, _ = new_key()
    admin.enable_ok(text)
    admin.stale_reauth()
    assert "confirmed recently" not in admin.page()
    response = admin.confirm("disable", orgs["a"]["slug"], password=None, acknowledge="y")
    assert response.status_code == 422
    assert feedback(response.get_data(as_text=True), "disable", "password") == REAUTH_MESSAGE
    assert by_testid(admin.page(), "byok-state") == "On"


def test_enable_refuses_a_key_the_organisation_used_before(app, admin, orgs):
    _, text, _ = new_key()
    admin.enable_ok(text)
    assert admin.confirm("disable", orgs["a"]["slug"], acknowledge="y").status_code == 200
    again = admin.enable(text)
    assert again.status_code == 422
    assert "used by your organisation before" in feedback(
        again.get_data(as_text=True), "enable", "key"
    )


def test_enable_while_byok_is_on_is_refused(app, admin, orgs):
    _, first, fp = new_key()
    admin.enable_ok(first)
    _, second, _ = new_key()
    response = admin.enable(second)
    assert response.status_code == 422
    assert "already enabled" in feedback(response.get_data(as_text=True), "enable", "form")
    assert [k.fingerprint for k in org_keys(app, orgs["a"]["id"]) if k.state == "active"] == [fp]


def test_after_enable_new_api_data_carries_the_byok_key_id_and_older_data_keeps_the_platform_key(
    app, admin, orgs
):
    api = Api.for_org(app, orgs["a"]["id"])
    platform = platform_key_ids(app, orgs["a"]["id"])
    conv = api.conversation("before")
    old_msg = api.message(conv, "written before BYOK")
    key, text, fp = new_key()
    admin.enable_ok(text)
    byok_id = crypto.key_id(key).hex()
    new_msg = api.message(conv, "written after BYOK")
    new_conv = api.conversation("after")
    upload = api.client.post(
        f"{API}/conversations/{new_conv}/attachments",
        data={"file": (io.BytesIO(b"report"), "r.txt", "text/plain")},
        content_type="multipart/form-data",
        headers=api.headers,
    )
    assert upload.status_code == 201
    assert key_id_of(app, Message, old_msg) in platform
    assert key_id_of(app, Conversation, conv) in platform
    assert key_id_of(app, Message, new_msg) == byok_id
    assert key_id_of(app, Conversation, new_conv) == byok_id
    assert key_id_of(app, Attachment, upload.get_json()["id"]) == byok_id
    assert api.bodies(conv) == ["written before BYOK", "written after BYOK"]
    html = admin.page()
    assert by_testid(html, "platform-items").startswith("2 items")
    assert key_row(html, fp)[3:6] == ["1", "1", "1"]


# --- status panel ---------------------------------------------------------------------------


def test_status_panel_shows_generated_key_origin_enabler_rotation_due_and_counts(app, admin, orgs):
    key, shown_fp = admin.generate()
    text = base64.b64encode(key).decode()
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation()
    fp = admin.enable_ok(text)
    assert fp == shown_fp
    for n in range(3):
        api.message(conv, f"m{n}")
    html = admin.page()
    assert by_testid(html, "byok-state") == "On"
    assert by_testid(html, "active-fingerprint") == fp
    tree = parse_html(html)
    facts = tree.find(id="byok-status").text()
    assert "generated here" in facts
    assert f"by {orgs['users']['admin_a']}" in facts
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert row.origin == "generated"
    due = (row.state_changed_at + timedelta(days=90)).strftime("%Y-%m-%d")
    assert by_testid(html, "rotation-due") == f"{due} (every 90 days)"
    assert "Rotation is overdue" not in html
    assert key_row(html, fp)[:6] == [fp, "active", "generated", "3", "0", "0"]
    platform_fp = next(
        k.fingerprint for k in org_keys(app, orgs["a"]["id"]) if k.origin == "platform"
    )
    assert key_row(html, platform_fp)[:6] == [
        platform_fp,
        "decrypt-only",
        "platform",
        "0",
        "0",
        "1",
    ]
    assert by_testid(html, "disable-count") == "3"


def test_key_generated_in_another_session_counts_as_imported(app, admin, orgs):
    key, _ = admin.generate()
    elsewhere = sign_in(app, orgs["users"]["admin_a"])
    fp = elsewhere.enable_ok(base64.b64encode(key).decode())
    assert key_by_fp(app, orgs["a"]["id"], fp).origin == "imported"
    assert "imported" in parse_html(elsewhere.page()).find(id="byok-status").text()


def test_rotation_overdue_warning_after_the_organisation_rotation_period(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    with app.app_context():
        db = get_session()
        db.get(Organization, orgs["a"]["id"]).rotation_period_days = 7
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        row.created_at = row.state_changed_at = utcnow() - timedelta(days=8)
        db.commit()
        due = (row.state_changed_at + timedelta(days=7)).strftime("%Y-%m-%d")
    html = admin.page()
    assert by_testid(html, "rotation-due") == f"{due} (every 7 days) Rotation is overdue"
    with app.app_context():
        db = get_session()
        db.get(Organization, orgs["a"]["id"]).rotation_period_days = 30
        db.commit()
    assert "Rotation is overdue" not in admin.page()


def test_revoke_and_restore_do_not_reset_the_rotation_clock(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        row.created_at = row.state_changed_at = utcnow() - timedelta(days=100)
        db.commit()
    assert "Rotation is overdue" in admin.page()
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    assert admin.post("restore", {"key": text}).status_code == 200
    html = admin.page()
    assert by_testid(html, "active-fingerprint") == fp
    assert "Rotation is overdue" in html


def test_every_wizard_field_has_a_label_and_its_feedback_container(app, admin, orgs):
    """Error text is tied to its field (aria-describedby), and every control is labelled."""
    _, text, _ = new_key()
    pages = [admin.page()]  # BYOK off: the enable step
    admin.enable_ok(text)
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    pages.append(admin.page())  # revoked: the restore step
    assert admin.post("restore", {"key": text}).status_code == 200
    pages.append(admin.page())
    seen = set()
    for html in pages:
        tree = parse_html(html)
        labels = {n.attrs.get("for") for n in tree.walk() if n.tag == "label"}
        wrapped = {c.attrs.get("id") for n in tree.walk() if n.tag == "label" for c in n.walk()}
        for form in tree.find_all():
            if form.tag != "form" or not form.attrs.get("action", "").startswith(f"{PAGE}/byok"):
                continue
            name = form.attrs.get("id", "").removesuffix("-form")
            for control in form.walk():
                if (
                    control.tag not in ("input", "textarea")
                    or control.attrs.get("type") == "hidden"
                ):
                    continue
                cid = control.attrs.get("id")
                assert cid and (cid in labels or cid in wrapped), (name, control.attrs)
                expected = f"{name}-{control.attrs['name']}-feedback"
                assert expected in control.attrs.get("aria-describedby", "").split(), cid
                assert tree.find(id=expected) is not None, expected
                seen.add(cid)
    assert {
        "enable-key",
        "enable-password",
        "restore-key",
        "restore-password",
        "disable-confirm_slug",
        "disable-acknowledge",
        "disable-password",
        "lost-confirm_slug",
        "revoke-password",
    } <= seen
