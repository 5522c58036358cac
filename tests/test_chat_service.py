"""The chat service layer on real services: exact round trips and who may store data."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from portal.chat import service
from portal.chat.models import ApiToken, Attachment, Conversation, Message
from portal.db import get_session
from portal.keys.policy import ByokRequired
from portal.keys.service import KeyUnavailable, load_keys, mark_state
from portal.orgs import create_org

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=25,
)
METADATA = st.dictionaries(st.text(max_size=20), JSON_VALUES, max_size=6)
BIG = b"\x00\xff" * (1024 * 1024)  # 2 MiB: the encrypt-into-buffer path of the keyring


@pytest.fixture
def org_id(app: Flask, orgs: dict) -> uuid.UUID:
    """Organisation A's id (an Organization Community org on its platform key)."""
    return orgs["a"]["id"]


def read_back(app: Flask, company_id: uuid.UUID, conv_id, msg_id, att_id) -> dict[str, Any]:
    """Load the rows in a fresh app context and session and decrypt them with a Reader."""
    with app.app_context():
        db = get_session()
        conv = service.get_conversation(db, company_id, conv_id)
        assert conv is not None
        msg = db.get(Message, msg_id)
        att = db.get(Attachment, att_id)
        reader = service.Reader(db, company_id)
        out = {
            "title": reader.column(conv, "title").decode(),
            "metadata": json.loads(reader.column(conv, "metadata")),
            "body": reader.column(msg, "body").decode(),
            "filename": reader.column(att, "filename").decode(),
            "content": reader.column(att, "content"),
            "size": att.size,
            "messages": [m.id for m in service.list_messages(db, conv, 10, None)],
        }
        assert reader.failures == {}
        return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    title=st.text(),
    metadata=METADATA,
    body=st.text(),
    filename=st.text(max_size=300),
    content=st.binary(max_size=64 * 1024),
)
@example(title="", metadata={}, body="", filename="", content=b"")
@example(
    title="🔐" * 5000, metadata={"x": [None] * 50}, body="é" * 100_000, filename="f", content=BIG
)
def test_arbitrary_values_round_trip_exactly_through_the_service_and_reader(
    app: Flask, org_id: uuid.UUID, title, metadata, body, filename, content
):
    """Whatever text, JSON document or bytes go in come back out unchanged."""
    with app.app_context():
        db = get_session()
        conv = service.create_conversation(db, org_id, title, metadata)
        msg = service.add_message(db, conv, "author", body)
        att = service.add_attachment(db, conv, filename, "application/octet-stream", content)
        db.commit()
        ids = conv.id, msg.id, att.id
    out = read_back(app, org_id, *ids)
    assert out["title"] == title
    assert out["metadata"] == metadata
    assert out["body"] == body
    assert out["filename"] == filename
    assert out["content"] == content
    assert out["size"] == len(content)
    assert out["messages"] == [ids[1]]


def count(app: Flask, model: type) -> int:
    """Count the rows of a model's table."""
    with app.app_context():
        return get_session().scalar(select(func.count()).select_from(model))


def test_every_write_function_refuses_a_dedicated_org_without_byok(app: Flask, org_id):
    """create_conversation, add_message and add_attachment all raise ByokRequired."""
    with app.app_context():
        db = get_session()
        conv = service.create_conversation(db, org_id, "before", {})
        db.commit()
        dedicated = create_org(db, "Dedicated Co", "dedicated")
        db.commit()
        with pytest.raises(ByokRequired):
            service.create_conversation(db, dedicated.id, "t", {})
        # A conversation row of the dedicated org, as if written before its upgrade.
        conv.company_id = dedicated.id
        with pytest.raises(ByokRequired):
            service.add_message(db, conv, "a", "b")
        with pytest.raises(ByokRequired):
            service.add_attachment(db, conv, "f", "text/plain", b"x")
        db.rollback()
    assert count(app, Message) == 0 and count(app, Attachment) == 0
    assert count(app, Conversation) == 1


def test_a_dedicated_deployment_refuses_writes_in_the_service_layer(app_config, orgs):
    """BYOK_DEPLOYMENT=dedicated makes every org's writes raise ByokRequired."""
    from portal import create_app

    dedicated = create_app({**app_config, "BYOK_DEPLOYMENT": "dedicated"})
    try:
        with dedicated.app_context(), pytest.raises(ByokRequired):
            service.create_conversation(get_session(), orgs["a"]["id"], "t", {})
    finally:
        dedicated.extensions["db_engine"].dispose()


def test_writes_raise_key_unavailable_when_the_encrypting_key_is_unusable(app: Flask, org_id):
    """Without a usable active key nothing can be encrypted, so nothing is stored."""
    with app.app_context():
        db = get_session()
        for row in load_keys(db, org_id).rows:
            mark_state(row, "unavailable", "test")
        with pytest.raises(KeyUnavailable):
            service.create_conversation(db, org_id, "t", {})
        db.rollback()
    assert count(app, Conversation) == 0


def test_writes_for_an_unknown_organisation_raise_lookup_error(app: Flask, orgs):
    """A company id that names no organisation is a programming error, not a silent write."""
    with app.app_context(), pytest.raises(LookupError):
        service.create_conversation(get_session(), uuid.uuid4(), "t", {})


def test_tokens_are_stored_hashed_and_found_only_while_live(app: Flask, org_id):
    """create_token returns a token whose hash alone is stored; revoked tokens are not found."""
    with app.app_context():
        db = get_session()
        token = service.create_token(db, org_id, "n")
        db.commit()
        row = db.scalar(select(ApiToken))
        assert row.token_hash == service.hash_token(token) and token not in row.token_hash
        assert service.find_token(db, token).id == row.id
        assert service.find_token(db, token + "x") is None
        assert service.find_token(db, token.removeprefix(service.TOKEN_PREFIX)) is None
        row.revoked_at = row.created_at
        db.commit()
        assert service.find_token(db, token) is None


def test_without_a_wired_keyring_source_chat_neither_stores_nor_reads(
    app: Flask, org_id, monkeypatch
):
    """chat gets keyrings only from create_app's wiring: missing, it refuses loudly."""
    with app.app_context():
        db = get_session()
        conv = service.create_conversation(db, org_id, "t", {})
        db.commit()
        monkeypatch.delitem(app.extensions, "keyrings")
        with pytest.raises(RuntimeError, match=r'extensions\["keyrings"\] is not set'):
            service.add_message(db, conv, "a", "never stored unchecked")
        with pytest.raises(RuntimeError, match="keyrings"):
            service.Reader(db, org_id).text(conv, "title")
        db.rollback()
    assert count(app, Message) == 0


def test_without_the_active_run_wiring_key_operations_fail_closed(app: Flask, orgs, monkeypatch):
    """keys cannot tell whether a rotation is moving items: it refuses, never assumes none."""
    from portal.keys import operations as ops
    from portal.models import Organization

    monkeypatch.delitem(app.extensions, "active_run")
    with app.app_context():
        db = get_session()
        org = db.get(Organization, orgs["a"]["id"])
        with pytest.raises(RuntimeError, match=r'extensions\["active_run"\] is not set'):
            ops.revoke(db, org, "cli", org.slug)
        with pytest.raises(RuntimeError, match="active_run"):
            ops.status(db, org)
