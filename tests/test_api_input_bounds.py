"""Bounds on what a conversation may hold (title length, metadata size and nesting depth), and
reads that survive a row stored beyond them before the bounds existed."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from sqlalchemy import func, select

from portal import create_app
from portal.chat import kinds, service
from portal.chat.models import Conversation
from portal.db import get_session
from portal.keys.service import encrypting_keyring
from tests.support.api import API, Api, assert_error, make_token


def nested(levels: int) -> dict:
    """A metadata document whose objects nest ``levels`` deep ({} is one level)."""
    doc: dict = {}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


def stored(app: Flask) -> int:
    """How many conversations the database holds."""
    with app.app_context():
        return get_session().scalar(select(func.count()).select_from(Conversation))


def test_metadata_nested_64_levels_is_accepted_and_reads_back(api):
    conv = api.conversation("deep", nested(64))
    assert api.get(f"/conversations/{conv}").get_json()["metadata"] == nested(64)


@pytest.mark.parametrize("levels", [65, 200, 967, 968, 5000])
def test_metadata_nested_deeper_than_64_levels_answers_400_and_stores_nothing(app, api, levels):
    inner = '{"a": ' * (levels - 1) + "[]" + "}" * (levels - 1)
    raw = '{"title": "x", "metadata": ' + inner + "}"
    body = assert_error(api.post_raw("/conversations", raw), 400, "too_deep")
    assert "64" in body["message"]
    assert stored(app) == 0


def test_a_title_of_1000_characters_is_accepted_and_one_more_is_refused(app, api):
    api.conversation("é" * 1000)
    body = assert_error(api.post_json("/conversations", {"title": "é" * 1001}), 400, "bad_title")
    assert "1000" in body["message"]
    ten_mb = api.post_json("/conversations", {"title": "x" * 10_000_000})
    assert_error(ten_mb, 400, "bad_title")
    assert stored(app) == 1


def test_metadata_of_64_kib_is_accepted_and_more_is_refused(app, api):
    def sized(n: int) -> dict:
        """Metadata whose compact UTF-8 JSON is exactly n bytes."""
        return {"k": "x" * (n - len('{"k":""}'))}

    assert len(json.dumps(sized(65536), separators=(",", ":")).encode()) == 65536
    api.conversation("fits", sized(65536))
    body = assert_error(
        api.post_json("/conversations", {"title": "x", "metadata": sized(65537)}),
        400,
        "bad_metadata",
    )
    assert "65536" in body["message"]
    assert stored(app) == 1


def test_the_bounds_are_configurable(app_config, orgs):
    small = create_app({**app_config, "MAX_TITLE_CHARS": 5, "MAX_METADATA_BYTES": 20})
    try:
        api = Api(small.test_client(), make_token(small, orgs["a"]["id"]))
        api.conversation("12345", {"a": "12345678901"})
        assert_error(api.post_json("/conversations", {"title": "123456"}), 400, "bad_title")
        too_big = {"title": "x", "metadata": {"a": "1234567890123"}}  # 21 bytes
        assert_error(api.post_json("/conversations", too_big), 400, "bad_metadata")
        document = api.get("/openapi.json").get_json()
        new = document["components"]["schemas"]["NewConversation"]["properties"]
        assert new["title"]["maxLength"] == 5
        assert "20 bytes" in new["metadata"]["description"]
    finally:
        small.extensions["db_engine"].dispose()


def test_the_openapi_document_states_the_default_bounds(api):
    document = api.get("/openapi.json").get_json()
    new = document["components"]["schemas"]["NewConversation"]["properties"]
    assert new["title"]["maxLength"] == 1000
    assert "65536 bytes" in new["metadata"]["description"]
    assert "64 levels" in new["metadata"]["description"]


def store_deep(app: Flask, company_id, levels: int) -> str:
    """Store a conversation whose metadata nests ``levels`` deep, bypassing the API's bound
    (as rows written before it existed are), and return its id."""
    raw = ('{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)).encode()
    with app.app_context():
        db = get_session()
        conv = service.create_conversation(db, company_id, f"deep {levels}", {})
        ring = encrypting_keyring(db, company_id)
        aad = kinds.associated_data(company_id, "conversations", "metadata", conv.id)
        conv.metadata_ct = bytes(ring.encrypt(raw, aad))
        db.commit()
        return str(conv.id)


@pytest.mark.parametrize("levels", [65, 967, 968, 3000])
def test_a_row_stored_too_deep_reads_as_unreadable_not_500(app, api, orgs, levels):
    fine = api.conversation("fine", {"ok": True})
    deep = store_deep(app, orgs["a"]["id"], levels)
    after = api.conversation("after")
    one = api.get(f"/conversations/{deep}")
    assert one.status_code == 200, one.get_data(as_text=True)[:300]
    summary = one.get_json()
    assert summary["status"] == "unreadable" and summary["reason"] == "too_deep"
    assert summary["title"] == f"deep {levels}" and "metadata" not in summary
    listed = api.get("/conversations")
    assert listed.status_code == 200, listed.get_data(as_text=True)[:300]
    by_id = {c["id"]: c for c in listed.get_json()["conversations"]}
    assert by_id[fine]["metadata"] == {"ok": True} and by_id[after]["title"] == "after"
    assert by_id[deep]["reason"] == "too_deep"
    for limit in (1, 2, 3):
        assert api.get("/conversations", limit=limit).status_code == 200


def test_the_too_deep_reason_is_documented(client):
    document = client.get(f"{API}/openapi.json").get_json()
    reasons = document["components"]["schemas"]["Unreadable"]["properties"]["reason"]["enum"]
    assert "too_deep" in reasons
