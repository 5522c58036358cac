"""The data API's success paths over real services: conversations, messages, attachments."""

from __future__ import annotations

import uuid

from portal.chat.service import create_token
from tests.support.api import (
    API,
)

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
