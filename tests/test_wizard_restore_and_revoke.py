"""The BYOK wizard's Restore and Revoke steps, and what the data API does after them."""

from __future__ import annotations

import json
import secrets

from sqlalchemy import select

from portal import crypto
from portal.chat.models import Message
from portal.db import get_session
from portal.keys.models import OrgKey
from tests.support.api import Api
from tests.support.html import by_testid, feedback, parse_html
from tests.support.web import PASSWORD
from tests.support.wizard import (
    REAUTH_MESSAGE,
    Wizard,
    add_org,
    app_config,  # noqa: F401 - fixture: the wizard's settings
    events,
    key_by_fp,
    key_id_of,
    key_row,
    new_key,
    sign_in,
)

# --- restore --------------------------------------------------------------------------------


def _lose(admin: Wizard, api: Api, slug: str) -> tuple[str, str, str]:
    """Enable a key, store a message under it, declare it lost; return text, fp, conv id."""
    _, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation("plans")
    api.message(conv, "kept safe")
    assert admin.confirm("lost", slug).status_code == 200
    return text, fp, conv


def test_restore_refuses_a_key_the_organisation_never_had(app, admin, orgs):
    api = Api.for_org(app, orgs["a"]["id"])
    _, fp, conv = _lose(admin, api, orgs["a"]["slug"])
    _, stranger, stranger_fp = new_key()
    response = admin.post("restore", {"key": stranger, "password": PASSWORD})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    message = feedback(html, "restore", "key")
    assert f"No key of your organisation has fingerprint {stranger_fp}" in message
    assert stranger not in html
    failed = events(app, "encryption_key.restore", orgs["a"]["id"])
    assert [(e.outcome, json.loads(e.details)) for e in failed] == [
        ("failure", {"fingerprint": stranger_fp, "reason": "unknown_key"})
    ]
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "lost"
    assert api.bodies(conv)[0]["status"] == "unreadable"


def test_restore_with_the_right_key_makes_the_data_readable_again(app, admin, orgs):
    api = Api.for_org(app, orgs["a"]["id"])
    text, fp, conv = _lose(admin, api, orgs["a"]["slug"])
    admin.stale_reauth()
    needs_password = admin.post("restore", {"key": text})
    assert needs_password.status_code == 422
    assert feedback(needs_password.get_data(as_text=True), "restore", "password") == REAUTH_MESSAGE
    response = admin.post("restore", {"key": text + "\n", "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert f"Key {fp} is restored" in html
    assert by_testid(html, "active-fingerprint") == fp
    assert api.bodies(conv) == ["kept safe"]
    assert api.read(conv)["title"] == "plans"
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert row.state == "active" and row.sealed is not None
    assert key_id_of(app, Message, api.message(conv, "again")) == row.key_id
    restored = events(app, "encryption_key.restored", orgs["a"]["id"])
    assert [json.loads(e.details) for e in restored] == [{"fingerprint": fp, "state": "active"}]


def test_restore_of_a_key_that_is_not_lost_is_refused(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    response = admin.post("restore", {"key": text, "password": PASSWORD})
    assert response.status_code == 422
    assert f"Key {fp} is active; there is nothing to restore." in feedback(
        response.get_data(as_text=True), "restore", "key"
    )


def test_restore_of_an_unavailable_key_after_moving_to_another_installation(app, admin, orgs):
    """A sealed copy that this installation's master key cannot unwrap (a backup restored
    elsewhere) leaves the key 'unavailable' until the admin pastes it again."""
    from portal.keys.custody.master_key import MasterKeyCustody
    from portal.keys.service import seal_context

    api = Api.for_org(app, orgs["a"]["id"])
    key, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "from the old installation")
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        elsewhere = MasterKeyCustody(secrets.token_bytes(32))
        row.sealed = elsewhere.seal(key, seal_context(row.company_id, row.key_id))
        db.commit()
    html = admin.page()
    assert key_row(html, fp)[1] == "unavailable"
    assert parse_html(html).find(id="restore-form") is not None
    assert api.bodies(conv)[0]["status"] == "unreadable"
    assert api.post_message(conv, "blocked").status_code == 503
    response = admin.post("restore", {"key": text, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert key_row(response.get_data(as_text=True), fp)[1] == "active"
    assert api.bodies(conv) == ["from the old installation"]
    assert api.post_message(conv, "writable again").status_code == 201


def test_restore_of_a_lost_key_after_a_new_key_was_enabled_keeps_the_new_key_encrypting(
    app, password_hash
):
    org = add_org(app, password_hash, "dedicated")
    wizard = sign_in(app, org["admin"])
    api = Api.for_org(app, org["id"])
    _, old_text, old_fp = new_key()
    wizard.enable_ok(old_text)
    conv = api.conversation()
    api.message(conv, "under the old key")
    assert wizard.confirm("lost", org["slug"]).status_code == 200
    new, new_text, new_fp = new_key()
    wizard.enable_ok(new_text)
    api.message(conv, "under the new key")
    response = wizard.post("restore", {"key": old_text})
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert key_row(html, old_fp)[1] == "decrypt-only"
    assert by_testid(html, "active-fingerprint") == new_fp
    assert api.bodies(conv) == ["under the old key", "under the new key"]
    later = api.message(conv, "later")
    assert key_id_of(app, Message, later) == crypto.key_id(new).hex()


# --- revoke ---------------------------------------------------------------------------------


def test_revoke_destroys_the_sealed_copy_and_blocks_reads_and_writes_until_restore(
    app, admin, orgs
):
    api = Api.for_org(app, orgs["a"]["id"])
    _, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation("kill switch")
    api.message(conv, "before revoke")
    response = admin.confirm("revoke", orgs["a"]["slug"])
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"Access to key {fp} is revoked" in html
    assert key_row(html, fp)[1] == "unavailable"
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.sealed) == ("unavailable", None)
    assert api.read(conv)["status"] == "unreadable"
    assert api.bodies(conv)[0]["status"] == "unreadable"
    blocked = api.post_message(conv, "during revoke")
    assert blocked.status_code == 503
    assert blocked.get_json()["error"] == "key_unavailable"
    assert api.create_conversation().status_code == 503
    revoked = events(app, "encryption_key.revoked", orgs["a"]["id"])
    assert [json.loads(e.details) for e in revoked] == [{"fingerprint": fp}]
    restored = admin.post("restore", {"key": text})
    assert restored.status_code == 200, restored.get_data(as_text=True)
    assert api.bodies(conv) == ["before revoke"]
    assert key_id_of(app, Message, api.message(conv, "after restore")) == row.key_id


def test_status_panel_after_revoke_does_not_claim_byok_is_off(app, admin, orgs):
    api = Api.for_org(app, orgs["a"]["id"])
    _, text, fp = new_key()
    admin.enable_ok(text)
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    assert api.create_conversation().status_code == 503  # nothing can be written now
    html = admin.page()
    assert not by_testid(html, "byok-state").startswith("Off")


def test_revoke_requires_the_typed_slug_and_password(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    admin.stale_reauth()
    no_password = admin.confirm("revoke", orgs["a"]["slug"], password=None)
    assert no_password.status_code == 422
    assert feedback(no_password.get_data(as_text=True), "revoke", "password") == REAUTH_MESSAGE
    wrong = admin.confirm("revoke", "")
    assert wrong.status_code == 422
    assert "to confirm" in feedback(wrong.get_data(as_text=True), "revoke", "confirm_slug")
    assert key_by_fp(app, orgs["a"]["id"], fp).sealed is not None


def test_revoke_is_refused_while_a_rotation_runs(app, admin, orgs):
    from portal.rotation.models import RotationRun

    _, text, fp = new_key()
    admin.enable_ok(text)
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        db.add(
            RotationRun(
                company_id=orgs["a"]["id"],
                old_key_ids=row.key_id,
                new_key_id="0" * 16,
                state="running",
                started_by="admin@a.example",
            )
        )
        db.commit()
    response = admin.confirm("revoke", orgs["a"]["slug"])
    assert response.status_code == 422
    assert "A key rotation is in progress" in feedback(
        response.get_data(as_text=True), "revoke", "form"
    )
    assert key_by_fp(app, orgs["a"]["id"], fp).sealed is not None
