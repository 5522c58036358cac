"""The data API over real services: every endpoint's success and error paths, tenant
isolation, what the database really holds, unreadable data, and the OpenAPI document."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from portal import create_app, crypto
from portal.audit.models import AuditEvent
from portal.chat.models import ApiToken, Attachment, Conversation, Message
from portal.chat.service import create_token
from portal.db import Base, get_session, utcnow
from portal.keys.models import OrgKey
from portal.keys.service import load_keys, mark_state, store_key, unseal
from portal.orgs import create_org
from tests.api_helpers import API, Api, assert_error, make_token
from tests.conftest import random_id


@pytest.fixture
def api_a(app: Flask, client: FlaskClient, orgs: dict) -> Api:
    """A client holding a token of organisation A."""
    return Api(client, make_token(app, orgs["a"]["id"], "token-a"))


@pytest.fixture
def api_b(app: Flask, orgs: dict) -> Api:
    """A client holding a token of organisation B (its own test client)."""
    return Api(app.test_client(), make_token(app, orgs["b"]["id"], "token-b"))


def rows(app: Flask, table: str, **where: Any) -> list[Any]:
    """Read the raw rows of a table with SQL (ciphertext columns as stored)."""
    tbl = Base.metadata.tables[table]
    query = select(tbl)
    for column, value in where.items():
        query = query.where(tbl.c[column] == value)
    with app.extensions["db_engine"].connect() as conn:
        return list(conn.execute(query))


def platform_key(app: Flask, company_id: uuid.UUID) -> tuple[str, bytes]:
    """Return the organisation's active platform key: (key id hex, raw key)."""
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(
                OrgKey.company_id == company_id,
                OrgKey.state == "active",
                OrgKey.origin == "platform",
            )
        )
        assert row is not None
        key = unseal(row)
        assert key is not None
        return row.key_id, key


def decrypt_failed_events(app: Flask, company_id: uuid.UUID) -> list[AuditEvent]:
    """Return the organisation's ``encryption_key.decrypt_failed`` audit events."""
    with app.app_context():
        return list(
            get_session().scalars(
                select(AuditEvent).where(
                    AuditEvent.company_id == company_id,
                    AuditEvent.action == "encryption_key.decrypt_failed",
                )
            )
        )


def copy_column(app: Flask, model: type, column: str, source: str, targets: list[str]) -> None:
    """Copy one row's stored ciphertext into other rows, as an attacker with SQL access could."""
    col = getattr(model, column)
    source_id = uuid.UUID(source)
    target_ids = [uuid.UUID(t) for t in targets]
    with app.extensions["db_engine"].begin() as conn:
        blob = conn.execute(select(col).where(model.id == source_id)).scalar_one()
        conn.execute(update(model).where(model.id.in_(target_ids)).values({column: blob}))


# ---------------------------------------------------------------- success paths


def test_create_conversation_answers_201_with_a_new_id(api_a):
    """POST /conversations creates one conversation and returns its UUID."""
    response = api_a.post_json("/conversations", {"title": "Plans", "metadata": {"k": [1, 2]}})
    assert response.status_code == 201
    conv_id = uuid.UUID(response.get_json()["id"])
    assert api_a.get(f"/conversations/{conv_id}").status_code == 200


def test_metadata_is_optional_and_defaults_to_an_empty_document(api_a):
    """A conversation created without metadata reads back with ``{}``."""
    response = api_a.post_json("/conversations", {"title": "No metadata"})
    assert response.status_code == 201
    body = api_a.get(f"/conversations/{response.get_json()['id']}").get_json()
    assert body["metadata"] == {}


def test_conversation_reads_back_title_metadata_messages_and_attachments(api_a):
    """GET a conversation returns everything written, messages oldest first."""
    metadata = {"team": "Ünïcödé ✓", "n": 3, "nested": {"list": [1.5, None, True]}}
    conv = api_a.conversation("Budget 2027 — 机密", metadata)
    bodies = ["first", "second ✉", "third\nwith newline"]
    ids = [api_a.message(conv, body, author=f"author{i}") for i, body in enumerate(bodies)]
    message_post = api_a.upload(conv, b"\x00\x01binary", "résumé.pdf", "application/pdf")
    assert message_post.status_code == 201
    assert message_post.get_json()["size"] == len(b"\x00\x01binary")
    att_id = message_post.get_json()["id"]

    response = api_a.get(f"/conversations/{conv}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == conv
    assert body["title"] == "Budget 2027 — 机密"
    assert body["metadata"] == metadata
    assert [m["id"] for m in body["messages"]] == ids
    assert [m["body"] for m in body["messages"]] == bodies
    assert [m["author"] for m in body["messages"]] == ["author0", "author1", "author2"]
    assert all(m["created_at"].endswith("Z") for m in body["messages"])
    assert body["next_after"] is None
    assert body["attachments"] == [
        {
            "id": att_id,
            "filename": "résumé.pdf",
            "content_type": "application/pdf",
            "size": 8,
            "created_at": body["attachments"][0]["created_at"],
        }
    ]


def test_messages_page_oldest_first_with_limit_and_after_cursor(api_a):
    """``limit`` and ``after`` walk the messages in order; the last page has no cursor."""
    conv = api_a.conversation()
    ids = [api_a.message(conv, f"message {i}") for i in range(5)]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        query = {"limit": 2, **({"after": after} if after else {})}
        page = api_a.get(f"/conversations/{conv}", **query).get_json()
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        after = page["next_after"]
        if after is None:
            break
        assert after == page["messages"][-1]["id"]
    assert seen == ids
    assert pages == 3


def test_a_page_exactly_filled_points_to_an_empty_last_page(api_a):
    """When the messages fill the last page exactly, the next page is empty and ends."""
    conv = api_a.conversation()
    ids = [api_a.message(conv, f"m{i}") for i in range(2)]
    first = api_a.get(f"/conversations/{conv}", limit=2).get_json()
    assert first["next_after"] == ids[-1]
    last = api_a.get(f"/conversations/{conv}", limit=2, after=ids[-1]).get_json()
    assert last["messages"] == [] and last["next_after"] is None


def test_attachment_download_returns_the_exact_bytes_and_content_type(api_a):
    """GET /attachments/<id> returns the stored bytes unchanged, as an attachment."""
    conv = api_a.conversation()
    content = bytes(range(256)) * 37 + b"\r\n\x00end"
    response = api_a.upload(conv, content, "photo.png", "image/png")
    assert response.status_code == 201
    assert response.get_json()["size"] == len(content)
    download = api_a.get(f"/attachments/{response.get_json()['id']}")
    assert download.status_code == 200
    assert download.data == content
    assert download.mimetype == "image/png"
    assert download.headers["Content-Disposition"] == "attachment"
    assert download.headers["X-Content-Type-Options"] == "nosniff"


def test_an_empty_attachment_round_trips(api_a):
    """A zero-byte file is stored and downloads as zero bytes."""
    conv = api_a.conversation()
    att = api_a.attachment(conv, b"", "empty.txt")
    download = api_a.get(f"/attachments/{att}")
    assert download.status_code == 200 and download.data == b""


def test_an_attachment_without_a_content_type_is_octet_stream(api_a):
    """A file part sent without a content type is served as application/octet-stream."""
    conv = api_a.conversation()
    response = api_a.upload(conv, b"abc", "noname", None)
    assert response.status_code == 201
    listing = api_a.get(f"/conversations/{conv}").get_json()["attachments"]
    assert listing[0]["content_type"] == "application/octet-stream"
    download = api_a.get(f"/attachments/{response.get_json()['id']}")
    assert download.data == b"abc"


def test_conversations_list_pages_oldest_first(api_a):
    """GET /conversations walks every conversation in creation order."""
    ids = [api_a.conversation(f"title {i}", {"i": i}) for i in range(5)]
    seen: list[dict] = []
    after = None
    while True:
        page = api_a.get("/conversations", limit=2, **({"after": after} if after else {}))
        assert page.status_code == 200
        body = page.get_json()
        seen += body["conversations"]
        after = body["next_after"]
        if after is None:
            break
    assert [c["id"] for c in seen] == ids
    assert [c["title"] for c in seen] == [f"title {i}" for i in range(5)]
    assert [c["metadata"] for c in seen] == [{"i": i} for i in range(5)]


def test_conversations_list_shows_only_the_token_organisation(api_a, api_b):
    """Each organisation's list holds its own conversations and nothing else."""
    mine = api_a.conversation("A's")
    theirs = api_b.conversation("B's")
    assert [c["id"] for c in api_a.get("/conversations").get_json()["conversations"]] == [mine]
    assert [c["id"] for c in api_b.get("/conversations").get_json()["conversations"]] == [theirs]


def test_the_openapi_document_is_public(client):
    """The OpenAPI document needs no token."""
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"].startswith("3.")


# ---------------------------------------------------------------- 400 and 415


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b"\xff\xfe\xfa", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'"a string"', "bad_json"),
        (b"null", "bad_json"),
        (b"42", "bad_json"),
        (b'{"title": NaN}', "bad_json"),
        (b'{"title": "x", "metadata": {"v": Infinity}}', "bad_json"),
        (b'{"title": "\\ud800"}', "bad_json"),
        (b'{"title": "x", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_deep"),
        (b"{}", "missing_field"),
        (b'{"title": ""}', "missing_field"),
        (b'{"title": "   "}', "missing_field"),
        (b'{"title": 5}', "missing_field"),
        (b'{"title": null}', "missing_field"),
        (b'{"title": "x", "metadata": []}', "bad_metadata"),
        (b'{"title": "x", "metadata": null}', "bad_metadata"),
        (b'{"title": "x", "metadata": "text"}', "bad_metadata"),
    ],
)
def test_bad_conversation_bodies_answer_400_and_store_nothing(app, api_a, raw, code):
    """Malformed JSON, non-objects and missing or blank fields are refused with 400."""
    response = api_a.post_raw("/conversations", raw, "application/json")
    assert_error(response, 400, code)
    assert rows(app, "conversations") == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"author": "ada"}, "missing_field"),
        ({"body": "hello"}, "missing_field"),
        ({"body": "", "author": "ada"}, "missing_field"),
        ({"body": "hi", "author": " \t"}, "missing_field"),
        ({"body": ["hi"], "author": "ada"}, "missing_field"),
        ({"body": "hi", "author": "x" * 201}, "bad_author"),
        ({"body": "hi", "author": "a\x00b"}, "bad_author"),
        ([{"body": "hi", "author": "ada"}], "bad_json"),
    ],
)
def test_bad_message_bodies_answer_400_and_store_nothing(app, api_a, body, code):
    """A message needs a non-blank body and an author of at most 200 characters."""
    conv = api_a.conversation()
    assert_error(api_a.post_json(f"/conversations/{conv}/messages", body), 400, code)
    assert rows(app, "messages") == []


def test_an_author_of_exactly_200_characters_is_accepted(api_a):
    """The author limit is inclusive."""
    conv = api_a.conversation()
    api_a.message(conv, "hi", author="é" * 200)
    assert api_a.get(f"/conversations/{conv}").get_json()["messages"][0]["author"] == "é" * 200


def test_nul_characters_round_trip_in_encrypted_fields(api_a):
    """NUL is fine where the value is encrypted (title, metadata, body)."""
    conv = api_a.conversation("a\x00b", {"k\x00": "v\x00"})
    api_a.message(conv, "x\x00y")
    body = api_a.get(f"/conversations/{conv}").get_json()
    assert body["title"] == "a\x00b" and body["metadata"] == {"k\x00": "v\x00"}
    assert body["messages"][0]["body"] == "x\x00y"


def test_a_lone_surrogate_in_a_message_answers_400_not_500(app, api_a):
    """JSON can escape a lone surrogate; it is not text and is refused."""
    conv = api_a.conversation()
    raw = b'{"body": "\\udc00 broken", "author": "ada"}'
    response = api_a.post_raw(f"/conversations/{conv}/messages", raw, "application/json")
    assert_error(response, 400, "bad_json")
    assert rows(app, "messages") == []


def test_an_attachment_without_a_file_field_answers_400(api_a):
    """The multipart body must carry the field ``file``."""
    conv = api_a.conversation()
    response = api_a.client.post(
        f"{API}/conversations/{conv}/attachments",
        data={"other": (io.BytesIO(b"x"), "x.txt")},
        content_type="multipart/form-data",
        headers=api_a.headers,
    )
    assert_error(response, 400, "missing_field")


def test_an_overlong_attachment_content_type_answers_400(app, api_a):
    """A content type that does not fit its column is refused, not a database error."""
    conv = api_a.conversation()
    response = api_a.upload(conv, b"x", "x.bin", "application/" + "x" * 300)
    assert_error(response, 400, "bad_content_type")
    assert rows(app, "attachments") == []


@pytest.mark.parametrize(
    "limit", ["0", "501", "-1", "abc", "", "1.5", "²", "1" * 5000, " 5", "0x10"]
)
def test_a_bad_limit_answers_400(api_a, limit):
    """``limit`` must be a whole number from 1 to 500, on both paginated endpoints."""
    conv = api_a.conversation()
    assert_error(api_a.get("/conversations", limit=limit), 400, "bad_limit")
    assert_error(api_a.get(f"/conversations/{conv}", limit=limit), 400, "bad_limit")


def test_limits_at_the_bounds_are_accepted(api_a):
    """1 and 500 are valid limits."""
    conv = api_a.conversation()
    for limit in ("1", "500"):
        assert api_a.get("/conversations", limit=limit).status_code == 200
        assert api_a.get(f"/conversations/{conv}", limit=limit).status_code == 200


def test_a_cursor_that_is_not_an_id_answers_400(api_a):
    """``after`` must be a UUID."""
    conv = api_a.conversation()
    assert_error(api_a.get("/conversations", after="not-an-id"), 400, "bad_after")
    assert_error(api_a.get(f"/conversations/{conv}", after="123"), 400, "bad_after")


def test_a_cursor_naming_nothing_of_yours_answers_400(api_a, api_b):
    """A cursor of another organisation, another conversation or nothing at all is refused."""
    conv = api_a.conversation()
    other_conv = api_a.conversation()
    other_message = api_a.message(other_conv, "elsewhere")
    b_conv = api_b.conversation()
    b_message = api_b.message(b_conv, "b's")
    assert_error(api_a.get("/conversations", after=str(random_id())), 400, "bad_after")
    assert_error(api_a.get("/conversations", after=b_conv), 400, "bad_after")
    for cursor in (str(random_id()), other_message, b_message):
        assert_error(api_a.get(f"/conversations/{conv}", after=cursor), 400, "bad_after")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"title": "x"}', "text/plain"),
        ("title=x", "application/x-www-form-urlencoded"),
        ('{"title": "x"}', "application/xml"),
    ],
)
def test_json_endpoints_refuse_other_media_types_with_415(app, api_a, data, content_type):
    """Conversations and messages are created from application/json only."""
    conv = api_a.conversation()
    assert_error(api_a.post_raw("/conversations", data, content_type), 415)
    assert_error(api_a.post_raw(f"/conversations/{conv}/messages", data, content_type), 415)
    assert len(rows(app, "conversations")) == 1
    assert rows(app, "messages") == []


def test_attachments_refuse_anything_but_multipart_with_415(app, api_a):
    """A JSON or raw body is not an upload."""
    conv = api_a.conversation()
    path = f"/conversations/{conv}/attachments"
    assert_error(api_a.post_json(path, {"file": "x"}), 415, "unsupported_media_type")
    assert_error(api_a.post_raw(path, b"raw", "application/octet-stream"), 415)
    assert rows(app, "attachments") == []


# ---------------------------------------------------------------- 401


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Bearer byok_wrong",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_requests_without_a_valid_bearer_token_answer_401(client, orgs, header):
    """Every data endpoint needs a valid bearer token."""
    headers = {"Authorization": header} if header is not None else {}
    conv = random_id()
    for method, path in (
        ("get", "/conversations"),
        ("post", "/conversations"),
        ("get", f"/conversations/{conv}"),
        ("post", f"/conversations/{conv}/messages"),
        ("post", f"/conversations/{conv}/attachments"),
        ("get", f"/attachments/{random_id()}"),
    ):
        response = getattr(client, method)(API + path, headers=headers, json={"title": "x"})
        assert_error(response, 401, "unauthorized")


def test_a_real_token_under_another_scheme_answers_401(app, client, orgs):
    """The token is only accepted as ``Bearer``; the scheme's case does not matter."""
    token = make_token(app, orgs["a"]["id"])
    for header in (f"Basic {token}", f"Token {token}", token, f"Bearer{token}"):
        response = client.get(f"{API}/conversations", headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")
    for header in (f"bearer {token}", f"BEARER  {token} "):
        response = client.get(f"{API}/conversations", headers={"Authorization": header})
        assert response.status_code == 200


def test_a_revoked_token_answers_401(app, api_a, orgs):
    """A token stops working once it is revoked."""
    assert api_a.get("/conversations").status_code == 200
    with app.app_context():
        db = get_session()
        token = db.scalar(select(ApiToken).where(ApiToken.company_id == orgs["a"]["id"]))
        token.revoked_at = utcnow()
        db.commit()
    assert_error(api_a.get("/conversations"), 401, "unauthorized")
    assert_error(api_a.post_json("/conversations", {"title": "x"}), 401, "unauthorized")


def test_a_tampered_token_answers_401(app, client, orgs):
    """Changing one character of a real token makes it useless."""
    token = make_token(app, orgs["a"]["id"])
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = client.get(f"{API}/conversations", headers={"Authorization": f"Bearer {tampered}"})
    assert_error(response, 401, "unauthorized")


# ---------------------------------------------------------------- 404 and tenancy


def test_another_organisation_ids_answer_404_and_change_nothing(app, api_a, api_b):
    """A token of org A cannot read or write org B's conversation or read its attachment."""
    b_conv = api_b.conversation("B secret")
    api_b.message(b_conv, "B message")
    b_att = api_b.attachment(b_conv, b"B file")
    assert_error(api_a.get(f"/conversations/{b_conv}"), 404, "not_found")
    assert_error(
        api_a.post_json(f"/conversations/{b_conv}/messages", {"body": "x", "author": "a"}),
        404,
        "not_found",
    )
    assert_error(api_a.upload(b_conv, b"x", "x.txt", "text/plain"), 404, "not_found")
    assert_error(api_a.get(f"/attachments/{b_att}"), 404, "not_found")
    assert len(rows(app, "messages")) == 1
    assert len(rows(app, "attachments")) == 1
    assert api_b.get(f"/conversations/{b_conv}").get_json()["title"] == "B secret"


def test_random_ids_answer_404(api_a):
    """Ids that name nothing answer 404 on every endpoint taking an id."""
    conv, att = random_id(), random_id()
    assert_error(api_a.get(f"/conversations/{conv}"), 404, "not_found")
    message = {"body": "x", "author": "a"}
    assert_error(api_a.post_json(f"/conversations/{conv}/messages", message), 404, "not_found")
    assert_error(api_a.upload(str(conv), b"x", "x.txt", "text/plain"), 404, "not_found")
    assert_error(api_a.get(f"/attachments/{att}"), 404, "not_found")


def test_a_conversation_id_is_not_an_attachment_id(api_a):
    """Ids of one kind do not open objects of another."""
    conv = api_a.conversation()
    assert_error(api_a.get(f"/attachments/{conv}"), 404, "not_found")


def test_malformed_ids_and_unknown_paths_answer_json_404(api_a):
    """Paths that match no route still answer a JSON error."""
    assert_error(api_a.get("/conversations/not-a-uuid"), 404)
    assert_error(api_a.get("/attachments/1234"), 404)
    assert_error(api_a.get("/nothing-here"), 404)


# ---------------------------------------------------------------- 413


@pytest.fixture
def small_app_config(app_config: dict) -> dict:
    """App settings with a 1 KiB attachment limit (set before ``app`` is created)."""
    app_config["MAX_ATTACHMENT_BYTES"] = 1024
    return app_config


def test_an_attachment_limit_set_in_config_is_enforced(small_app_config, app, orgs):
    """The limit comes from the app's config; 1024 bytes pass, 1025 do not."""
    api = Api(app.test_client(), make_token(app, orgs["a"]["id"]))
    conv = api.conversation()
    assert api.upload(conv, b"y" * 1024, "ok.bin", None).status_code == 201
    assert_error(api.upload(conv, b"y" * 1025, "no.bin", None), 413, "too_large")
    assert_error(api.upload(conv, b"y" * (2 * 1024 * 1024), "huge.bin", None), 413)
    assert len(rows(app, "attachments")) == 1


# ---------------------------------------------------------------- 409 BYOK required


def enable_byok(app: Flask, company_id: uuid.UUID) -> str:
    """Make a generated key the organisation's active key (platform key decrypt-only)."""
    with app.app_context():
        db = get_session()
        loaded = load_keys(db, company_id)
        for row in loaded.rows:
            if row.state == "active":
                mark_state(row, "decrypt_only", "test")
        db.flush()
        row = store_key(
            db, company_id, crypto.generate_key(), origin="generated", state="active", actor="t"
        )
        db.commit()
        return row.key_id


def assert_writes_need_byok(api: Api, conv: str) -> None:
    """Every write endpoint answers 409 byok_required."""
    assert_error(api.post_json("/conversations", {"title": "x"}), 409, "byok_required")
    message = {"body": "x", "author": "a"}
    assert_error(api.post_json(f"/conversations/{conv}/messages", message), 409, "byok_required")
    assert_error(api.upload(conv, b"x", "x.txt", "text/plain"), 409, "byok_required")


def test_a_dedicated_tier_org_cannot_store_data_until_byok_is_enabled(app, client):
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

    own_key = enable_byok(app, org_id)
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
    app, app_config, api_a, orgs
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
        enable_byok(dedicated, orgs["a"]["id"])
        api.message(conv, "allowed now")
    finally:
        dedicated.extensions["db_engine"].dispose()


# ---------------------------------------------------------------- what the database holds


def test_the_database_holds_only_ciphertext_bound_to_its_place(app, api_a, api_b, orgs):
    """Raw columns hold no plaintext; each decrypts with its own AD and no other."""
    title, meta_value = "Project Zanzibar 7731", "Falcon-Secret-92"
    body, filename = "Launch code is Orchid-4417", "nuclear-recipe-0042.txt"
    content = b"TOP SECRET CONTENT 5150 " * 50
    conv = api_a.conversation(title, {"codename": meta_value})
    msg = api_a.message(conv, body)
    att = api_a.upload(conv, content, filename, "text/plain").get_json()["id"]
    other_conv = api_a.conversation("another")
    b_conv = api_b.conversation("B's conversation")

    plaintexts = [p.encode() for p in (title, meta_value, body, filename)] + [content[:24]]
    for table in ("conversations", "messages", "attachments"):
        for row in rows(app, table):
            for value in row:
                raw = value if isinstance(value, bytes) else str(value).encode()
                for plain in plaintexts:
                    assert plain not in raw, f"{plain!r} stored in the clear in {table}"

    key_id, key = platform_key(app, orgs["a"]["id"])
    ring = crypto.Keyring(encrypting=key)
    cid = str(orgs["a"]["id"])
    conv_row = rows(app, "conversations", id=uuid.UUID(conv))[0]
    msg_row = rows(app, "messages", id=uuid.UUID(msg))[0]
    att_row = rows(app, "attachments", id=uuid.UUID(att))[0]
    expected = [
        (conv_row.title_ct, "conversations", "title", conv, title.encode()),
        (conv_row.metadata_ct, "conversations", "metadata", conv, None),
        (msg_row.body_ct, "messages", "body", msg, body.encode()),
        (att_row.filename_ct, "attachments", "filename", att, filename.encode()),
        (att_row.content_ct, "attachments", "content", att, content),
    ]
    for blob, table, column, row_id, plain in expected:
        assert crypto.blob_key_id(blob).hex() == key_id
        opened = ring.decrypt(blob, crypto.associated_data(cid, table, column, row_id))
        if plain is not None:
            assert opened == plain
        else:
            assert json.loads(opened) == {"codename": meta_value}
        wrong_places = [
            crypto.associated_data(cid, table, column, other_conv),
            crypto.associated_data(cid, table, "other_column", row_id),
            crypto.associated_data(cid, "other_table", column, row_id),
            crypto.associated_data(str(orgs["b"]["id"]), table, column, row_id),
        ]
        for aad in wrong_places:
            with pytest.raises(crypto.DecryptionError) as failure:
                ring.decrypt(blob, aad)
            assert failure.value.reason == "integrity"
    # Org B's values are under B's key: A's key does not even name them.
    b_title = rows(app, "conversations", id=uuid.UUID(b_conv))[0].title_ct
    with pytest.raises(crypto.DecryptionError) as failure:
        ring.decrypt(b_title, crypto.associated_data(cid, "conversations", "title", b_conv))
    assert failure.value.reason == "unknown_key"


def test_every_row_records_the_org_active_platform_key_id(app, api_a, api_b, orgs):
    """key_id of every encrypted row names the key in its ciphertext: the org's platform key."""
    for api in (api_a, api_b):
        conv = api.conversation()
        api.message(conv, "m")
        api.attachment(conv, b"a")
    key_ids = {org: platform_key(app, orgs[org]["id"])[0] for org in ("a", "b")}
    assert key_ids["a"] != key_ids["b"]
    blob_columns = {
        "conversations": ("title_ct", "metadata_ct"),
        "messages": ("body_ct",),
        "attachments": ("filename_ct", "content_ct"),
    }
    for org in ("a", "b"):
        for table, columns in blob_columns.items():
            found = rows(app, table, company_id=orgs[org]["id"])
            assert len(found) == 1
            for row in found:
                assert row.key_id == key_ids[org]
                for column in columns:
                    assert crypto.blob_key_id(getattr(row, column)).hex() == key_ids[org]


# ---------------------------------------------------------------- unreadable data


def test_a_ciphertext_copied_into_other_rows_reads_as_unreadable_with_one_audit_event(
    app, api_a, orgs
):
    """Copied ciphertext fails its integrity check: reported per item, audited once, no 500."""
    conv = api_a.conversation()
    ids = [api_a.message(conv, f"message {i}") for i in range(4)]
    copy_column(app, Message, "body_ct", ids[0], ids[1:3])
    response = api_a.get(f"/conversations/{conv}")
    assert response.status_code == 200
    bodies = [m["body"] for m in response.get_json()["messages"]]
    unreadable = {"status": "unreadable", "reason": "integrity"}
    assert bodies == ["message 0", unreadable, unreadable, "message 3"]

    events = decrypt_failed_events(app, orgs["a"]["id"])
    assert len(events) == 1
    event = events[0]
    details = json.loads(event.details)
    assert details["count"] == 2
    assert details["kinds"] == {"messages": 2}
    platform_id = bytes.fromhex(platform_key(app, orgs["a"]["id"])[0])
    assert details["fingerprint"] == crypto.fingerprint(platform_id)
    assert event.outcome == "failure"
    assert event.actor_type == "api_token"


def test_copied_conversation_and_attachment_values_are_unreadable_not_errors(app, api_a, orgs):
    """Titles, file names and file contents moved between rows are reported unreadable."""
    first, second = api_a.conversation("first"), api_a.conversation("second")
    att1 = api_a.attachment(first, b"one", "one.txt")
    att2 = api_a.attachment(first, b"two", "two.txt")
    copy_column(app, Conversation, "title_ct", first, [second])
    copy_column(app, Attachment, "filename_ct", att1, [att2])
    copy_column(app, Attachment, "content_ct", att1, [att2])

    listing = api_a.get("/conversations").get_json()["conversations"]
    assert listing[0]["title"] == "first"
    assert listing[1]["status"] == "unreadable" and listing[1]["reason"] == "integrity"
    detail = api_a.get(f"/conversations/{first}").get_json()
    assert [a["filename"] for a in detail["attachments"]] == [
        "one.txt",
        {"status": "unreadable", "reason": "integrity"},
    ]
    download = api_a.get(f"/attachments/{att2}")
    assert download.status_code == 409
    assert download.get_json() == {"id": att2, "status": "unreadable", "reason": "integrity"}
    assert api_a.get(f"/attachments/{att1}").data == b"one"
    # Failures under one key are aggregated per minute: the first is written at once, the
    # rest counted and written as one follow-up event when the minute's bucket is flushed.
    immediate = decrypt_failed_events(app, orgs["a"]["id"])
    minutes = {json.loads(e.details)["minute"] for e in immediate}
    assert len(immediate) == len(minutes) <= 2
    from portal.audit import aggregate

    key_id = json.loads(immediate[0].details)["fingerprint"]
    with app.app_context():
        db = get_session()
        for minute in minutes:
            aggregate.flush(db, orgs["a"]["id"], key_id, minute)
        db.commit()
    events = decrypt_failed_events(app, orgs["a"]["id"])
    assert sum(json.loads(e.details)["count"] for e in events) == 3
    assert len(events) <= 2 * len(minutes)
    kinds = {k for e in immediate for k in json.loads(e.details)["kinds"]}
    assert kinds <= {"conversations", "attachments"}


def test_a_ciphertext_moved_to_another_organisation_is_under_an_unknown_key(
    app, api_a, api_b, orgs
):
    """B cannot read A's ciphertext even when it sits in B's own row."""
    a_msg = api_a.message(api_a.conversation(), "A's words")
    b_conv = api_b.conversation()
    b_msg = api_b.message(b_conv, "B's words")
    copy_column(app, Message, "body_ct", a_msg, [b_msg])
    message = api_b.get(f"/conversations/{b_conv}").get_json()["messages"][0]
    assert message["body"] == {"status": "unreadable", "reason": "unknown_key"}
    assert len(decrypt_failed_events(app, orgs["b"]["id"])) == 1


def test_a_wrong_master_key_makes_keys_unavailable_and_the_api_says_so(
    app, app_config, api_a, orgs
):
    """Another master key: the portal starts, reads say key_unavailable, writes answer 503."""
    conv = api_a.conversation("sealed away")
    api_a.message(conv, "hidden")
    att = api_a.attachment(conv, b"locked")
    other_key = base64.b64encode(crypto.generate_key()).decode()
    wrong = create_app({**app_config, "BYOK_MASTER_KEY": other_key})
    try:
        api = Api(wrong.test_client(), make_token(wrong, orgs["a"]["id"]))
        unavailable = {"status": "unreadable", "reason": "key_unavailable"}
        detail = api.get(f"/conversations/{conv}")
        assert detail.status_code == 200
        body = detail.get_json()
        assert body["status"] == "unreadable" and body["reason"] == "key_unavailable"
        assert "title" not in body
        assert body["messages"][0]["body"] == unavailable
        assert body["attachments"][0]["filename"] == unavailable
        listing = api.get("/conversations").get_json()["conversations"][0]
        assert listing["reason"] == "key_unavailable"
        download = api.get(f"/attachments/{att}")
        assert download.status_code == 409
        assert download.get_json()["reason"] == "key_unavailable"

        assert_error(api.post_json("/conversations", {"title": "x"}), 503, "key_unavailable")
        message = {"body": "x", "author": "a"}
        assert_error(
            api.post_json(f"/conversations/{conv}/messages", message), 503, "key_unavailable"
        )
        assert_error(api.upload(conv, b"x", "x", None), 503, "key_unavailable")
        assert len(rows(wrong, "conversations")) == 1 and len(rows(wrong, "messages")) == 1

        with wrong.app_context():
            loaded = load_keys(get_session(), orgs["a"]["id"])
            assert [loaded.effective_state(r) for r in loaded.rows] == ["unavailable"]
            assert loaded.keyring.encrypting_key_id is None
        assert decrypt_failed_events(wrong, orgs["a"]["id"])
    finally:
        wrong.extensions["db_engine"].dispose()
    # The right master key still reads everything.
    assert api_a.get(f"/conversations/{conv}").get_json()["title"] == "sealed away"


# ---------------------------------------------------------------- tokens


def test_create_token_cli_prints_the_token_alone_last_and_stores_only_its_hash(
    app, app_config, orgs
):
    """The CLI's last stdout line is a working token; the database holds its hash only."""
    env = {
        **os.environ,
        "BYOK_HOME": app_config["BYOK_HOME"],
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", "create-token", "--org", orgs["a"]["slug"]]
        + ["--name", "ci pipeline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"byok_[A-Za-z0-9_-]{43}", token), done.stdout
    assert done.stdout.count(token) == 1 and token not in done.stderr

    api = Api(app.test_client(), token)
    assert api.get("/conversations").status_code == 200

    stored = rows(app, "api_tokens")
    assert len(stored) == 1
    assert stored[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert stored[0].name == "ci pipeline"
    for value in stored[0]:
        assert token not in str(value)
        assert token[len("byok_") :] not in str(value)


def test_create_token_cli_refuses_an_unknown_org(app, app_config):
    """An unknown slug is an error on stderr with a non-zero exit and no token."""
    env = {**os.environ, "BYOK_HOME": app_config["BYOK_HOME"]}
    env.update({k: app_config[k] for k in ("DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY")})
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", "create-token", "--org", "nope", "--name", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "nope" in done.stderr
    assert rows(app, "api_tokens") == []


# ---------------------------------------------------------------- OpenAPI


def openapi_paths(app: Flask) -> dict[str, set[str]]:
    """Return the app's /api/v1 routes in OpenAPI form, with their methods."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API + "/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule[len(API) :])
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routes.setdefault(path, set()).update(methods)
    return routes


def test_the_openapi_document_validates(client):
    """The published document is a valid OpenAPI 3.1 document."""
    import openapi_spec_validator as validator

    document = client.get(f"{API}/openapi.json").get_json()
    validator.validate(document)
    assert document["openapi"] == "3.1.0"


def test_the_openapi_document_lists_exactly_the_routes(app, client):
    """Every /api/v1 route is in the document with the same methods, and nothing else is."""
    document = client.get(f"{API}/openapi.json").get_json()
    documented = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in document["paths"].items()
    }
    assert documented == openapi_paths(app)


def test_every_documented_operation_lists_the_errors_it_can_answer(client):
    """Writes document 400/401/404/409/415/503, reads 401/404, uploads 413."""
    paths = client.get(f"{API}/openapi.json").get_json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path == "/openapi.json":
                assert operation["security"] == []
                continue
            assert {"401", "404"} <= codes, (path, method)
            if method == "post":
                assert {"201", "400", "409", "415", "503"} <= codes, (path, method)
    assert "413" in paths["/conversations/{conv_id}/attachments"]["post"]["responses"]


def test_responses_match_the_documented_schemas(api_a):
    """Real responses validate against the document's component schemas."""
    import jsonschema

    conv = api_a.conversation("Schema", {"a": 1})
    api_a.message(conv, "hello")
    api_a.attachment(conv, b"bytes")
    document = api_a.client.get(f"{API}/openapi.json").get_json()

    def check(instance: Any, name: str) -> None:
        """Validate an instance against a component schema of the document."""
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    check(api_a.get(f"/conversations/{conv}").get_json(), "Conversation")
    check(api_a.get("/conversations").get_json(), "ConversationPage")
    check(api_a.post_json("/conversations", {"title": ""}).get_json(), "Error")
    check(api_a.get(f"/conversations/{random_id()}").get_json(), "Error")


def test_edit_message_re_encrypts_under_the_current_key_and_is_tenant_scoped(app, orgs):

    with app.app_context():
        from portal.db import get_session

        db = get_session()
        token_a = create_token(db, orgs["a"]["id"], "a")
        token_b = create_token(db, orgs["b"]["id"], "b")
        db.commit()
    client = app.test_client()
    auth_a = {"Authorization": f"Bearer {token_a}"}
    conv = client.post("/api/v1/conversations", json={"title": "t"}, headers=auth_a).get_json()
    msg = client.post(
        f"/api/v1/conversations/{conv['id']}/messages",
        json={"body": "before", "author": "me"},
        headers=auth_a,
    ).get_json()
    other = client.patch(
        f"/api/v1/messages/{msg['id']}",
        json={"body": "hijack"},
        headers={"Authorization": f"Bearer {token_b}"},
    )
    assert other.status_code == 404
    missing = client.patch(f"/api/v1/messages/{msg['id']}", json={}, headers=auth_a)
    assert missing.status_code == 400
    edited = client.patch(f"/api/v1/messages/{msg['id']}", json={"body": "after"}, headers=auth_a)
    assert edited.status_code == 200
    page = client.get(f"/api/v1/conversations/{conv['id']}", headers=auth_a).get_json()
    assert [m["body"] for m in page["messages"]] == ["after"]
