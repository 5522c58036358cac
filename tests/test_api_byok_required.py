"""The data API where BYOK is required: writes answer 409 until a key is enabled."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from portal import create_app, crypto
from portal.db import Base, get_session
from portal.orgs import create_org
from tests.support.api import (
    Api,
    assert_error,
    make_token,
    rows,
)

# ---------------------------------------------------------------- 409 BYOK required


def assert_writes_need_byok(api: Api, conv: str) -> None:
    """Every write endpoint answers 409 byok_required."""
    assert_error(api.post_json("/conversations", {"title": "x"}), 409, "byok_required")
    message = {"body": "x", "author": "a"}
    assert_error(api.post_json(f"/conversations/{conv}/messages", message), 409, "byok_required")
    assert_error(api.upload(conv, b"x", "x.txt", "text/plain"), 409, "byok_required")


def test_a_dedicated_tier_org_cannot_store_data_until_byok_is_enabled(app, client, enable_byok):
    """Writes answer 409 byok_required for a Dedicated org; reads work; BYOK unlocks writes."""
    with app.app_context():
        db = get_session()
        org = create_org(db, "Org D", "org_community")
        db.commit()
        org_id = org.id
    api = Api(client, make_token(app, org_id))
    # Data written before an upgrade to Dedicated stays readable after it.
    conv = api.conversation("before the upgrade")
    att = api.attachment(conv, b"kept")
    with app.extensions["db_engine"].begin() as conn:
        conn.execute(
            update(Base.metadata.tables["organizations"])
            .where(Base.metadata.tables["organizations"].c.id == org_id)
            .values(tier="dedicated")
        )
    assert_writes_need_byok(api, conv)
    assert len(rows(app, "conversations")) == 1 and rows(app, "messages") == []
    assert api.get(f"/conversations/{conv}").get_json()["title"] == "before the upgrade"
    assert api.get(f"/attachments/{att}").data == b"kept"
    assert api.get("/conversations").status_code == 200

    own_key = crypto.key_id(enable_byok(org_id)).hex()
    new_conv = api.conversation("after BYOK")
    api.message(new_conv, "now allowed")
    assert [r.key_id for r in rows(app, "conversations", id=uuid.UUID(new_conv))] == [own_key]
    assert api.get(f"/conversations/{conv}").get_json()["title"] == "before the upgrade"


def test_a_dedicated_org_created_as_such_answers_409(app, client):
    """A brand-new Dedicated org with only its platform key cannot store a conversation."""
    with app.app_context():
        db = get_session()
        org = create_org(db, "Org E", "on_prem")
        db.commit()
        org_id = org.id
    api = Api(client, make_token(app, org_id))
    body = assert_error(api.post_json("/conversations", {"title": "x"}), 409, "byok_required")
    assert "BYOK" in body["message"]
    assert rows(app, "conversations") == []


def test_a_dedicated_deployment_refuses_writes_until_byok_but_still_reads(
    app, app_config, api_a, orgs, enable_byok
):
    """With BYOK_DEPLOYMENT=dedicated every org needs its own key before storing data."""
    conv = api_a.conversation("written while shared")
    att = api_a.attachment(conv, b"file")
    dedicated = create_app({**app_config, "BYOK_DEPLOYMENT": "dedicated"})
    try:
        api = Api(dedicated.test_client(), make_token(dedicated, orgs["a"]["id"]))
        assert_writes_need_byok(api, conv)
        assert api.get(f"/conversations/{conv}").get_json()["title"] == "written while shared"
        assert api.get(f"/attachments/{att}").data == b"file"
        assert len(api.get("/conversations").get_json()["conversations"]) == 1
        enable_byok(orgs["a"]["id"], on=dedicated)
        api.message(conv, "allowed now")
    finally:
        dedicated.extensions["db_engine"].dispose()
