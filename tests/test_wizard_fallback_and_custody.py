"""The BYOK wizard for isolated tiers, as plain form posts, and key custody over all of it."""

from __future__ import annotations

import base64
import json
import logging
import secrets

import pytest
from sqlalchemy import func, select

from portal import crypto
from portal.audit.models import AuditEvent
from portal.chat.models import Conversation
from portal.db import get_session
from tests.support.api import Api
from tests.support.html import by_testid, feedback, parse_html
from tests.support.leaks import key_forms, scan_database, scan_redis
from tests.support.web import PASSWORD
from tests.support.wizard import (
    PAGE,
    add_org,
    app_config,  # noqa: F401 - fixture: the wizard's settings
    key_id_of,
    new_key,
    session_cookie,
    sign_in,
)

# --- isolated tiers and the data API --------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment", "tier"),
    [("shared", "dedicated"), ("shared", "on_prem"), ("on_prem", "org_community")],
)
def test_isolated_organisation_api_writes_answer_409_byok_required_until_enable(
    app, password_hash, deployment, tier
):
    org = add_org(app, password_hash, tier)
    api = Api.for_org(app, org["id"])
    refused = api.create_conversation()
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "byok_required"
    with app.app_context():
        assert get_session().scalar(select(func.count()).select_from(Conversation)) == 0
    key, text, _ = new_key()
    sign_in(app, org["admin"]).enable_ok(text)
    conv = api.conversation()
    assert key_id_of(app, Conversation, conv) == crypto.key_id(key).hex()


# --- the full-page fallback -----------------------------------------------------------------


def test_plain_form_posts_walk_the_wizard_with_redirect_and_flash(app, admin, orgs):
    _, text, fp = new_key()
    tested = admin.test_key(text, htmx=False)
    assert tested.status_code == 200
    html = tested.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in html
    assert parse_html(html).find(id="enable-tested").attrs["value"] == fp
    # Without JavaScript the tested key stays in its field (no second paste), never cached.
    assert parse_html(html).find(id="enable-key").text() == text
    assert tested.headers["Cache-Control"] == "no-store"
    enabled = admin.post(
        "enable", {"key": text, "tested_fingerprint": fp, "password": PASSWORD}, htmx=False
    )
    assert enabled.status_code == 303
    assert enabled.headers["Location"].endswith(PAGE)
    assert "HX-Retarget" not in enabled.headers
    page = admin.page()
    assert f"BYOK is enabled with key {fp}" in page
    assert by_testid(page, "active-fingerprint") == fp
    assert f"BYOK is enabled with key {fp}" not in admin.page()  # the flash is shown once
    disabled = admin.post(
        "disable", {"confirm_slug": orgs["a"]["slug"], "acknowledge": "y"}, htmx=False
    )
    assert disabled.status_code == 303
    assert "BYOK is disabled" in admin.page()


def test_plain_form_post_errors_answer_422_with_the_full_page_and_the_message(admin, orgs):
    hexkey = "ab" * 32
    refused = admin.test_key(hexkey, htmx=False)
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in html
    assert "hex-encoded key" in feedback(html, "enable", "key")
    assert parse_html(html).find(id="enable-key").attrs.get("aria-invalid") == "true"
    assert hexkey not in html
    _, text, _ = new_key()
    admin.enable_ok(text)
    wrong = admin.post("disable", {"confirm_slug": "nope", "acknowledge": "y"}, htmx=False)
    assert wrong.status_code == 422
    page = wrong.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in page
    assert "to confirm" in feedback(page, "disable", "confirm_slug")
    details = parse_html(page).find(id="disable-form").parent
    assert details.tag == "details" and "open" in details.attrs


# --- key custody over the whole wizard ------------------------------------------------------


def test_no_key_material_anywhere_after_running_the_whole_wizard(app, admin, orgs, caplog):
    caplog.set_level(logging.DEBUG)
    api = Api.for_org(app, orgs["a"]["id"])
    used: list[bytes] = []
    generated, _ = admin.generate()
    used.append(generated)
    text = base64.b64encode(generated).decode()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "one")
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    assert admin.post("restore", {"key": text}).status_code == 200
    assert admin.confirm("disable", orgs["a"]["slug"], acknowledge="y").status_code == 200
    imported, imported_text, _ = new_key()
    used.append(imported)
    admin.test_key("  " + imported_text + "\n")
    admin.enable_ok(imported_text)
    api.message(conv, "two")
    assert admin.confirm("lost", orgs["a"]["slug"]).status_code == 200
    admin.post("restore", {"key": base64.b64encode(secrets.token_bytes(32)).decode()})
    assert admin.post("restore", {"key": imported_text}).status_code == 200
    assert api.bodies(conv) == ["one", "two"]
    assert scan_database(app, used) == []
    assert scan_redis(app, used) == []
    assert not any(f.decode("latin-1") in caplog.text for k in used for f in key_forms(k))
    cookie = json.dumps(session_cookie(app, admin.client))
    assert not any(f.decode("latin-1") in cookie for k in used for f in key_forms(k))
    with app.app_context():
        details = [e.details for e in get_session().scalars(select(AuditEvent)) if e.company_id]
    assert details and not any(
        f.decode("latin-1") in d for d in details for k in used for f in key_forms(k)
    )
