"""What the data API really stores (ciphertext bound to its place) and how unreadable data reads."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from portal import create_app, crypto
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session
from portal.keys.service import load_keys
from tests.support.api import (
    Api,
    assert_error,
    copy_column,
    decrypt_failed_events,
    make_token,
    platform_key,
    rows,
)

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
