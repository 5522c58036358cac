"""Deleting data through the API: conversations (with their messages and attachments),
messages and attachments; tenant-scoped; and harmless to a rotation running over the rows."""

from __future__ import annotations

import uuid

from flask import Flask
from sqlalchemy import func, select

from portal import crypto
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session
from portal.keys import operations as ops
from portal.keys.models import OrgKey
from portal.models import Organization
from portal.orgs import create_org
from portal.rotation import engine
from portal.rotation.controls import failure_count, retry_failed
from portal.rotation.models import RotationRange, RotationRun
from portal.rotation.progress import progress as run_progress
from portal.rotation.queue import enqueue_ranges
from portal.rotation.start import start_rotation
from tests.support.api import Api, assert_error, make_token
from tests.support.rotation import b64, enable_byok, key_ids, plaintext_digest, run_worker, seed
from tests.support.web import random_id


def ids(app: Flask, model: type, company_id: uuid.UUID | None = None) -> set[str]:
    """The ids of a table's rows (of one organisation, if given), straight from the database."""
    with app.app_context():
        query = select(model.id)
        if company_id is not None:
            query = query.where(model.company_id == company_id)
        return {str(i) for i in get_session().scalars(query)}


def conversation_with_data(api: Api, title: str) -> tuple[str, list[str], list[str]]:
    """A conversation with two messages and two attachments: (conv, messages, attachments)."""
    conv = api.conversation(title)
    messages = [api.message(conv, f"{title} {i}") for i in range(2)]
    attachments = [api.attachment(conv, f"{title} file {i}".encode()) for i in range(2)]
    return conv, messages, attachments


def test_deleting_a_conversation_removes_its_messages_and_attachments(app, api_a):
    conv, messages, attachments = conversation_with_data(api_a, "doomed")
    kept, kept_messages, kept_attachments = conversation_with_data(api_a, "kept")
    response = api_a.delete(f"/conversations/{conv}")
    assert response.status_code == 204 and response.data == b""
    assert_error(api_a.get(f"/conversations/{conv}"), 404, "not_found")
    for att in attachments:
        assert_error(api_a.get(f"/attachments/{att}"), 404, "not_found")
    assert ids(app, Conversation) == {kept}
    assert ids(app, Message) == set(kept_messages)
    assert ids(app, Attachment) == set(kept_attachments)
    listed = api_a.get("/conversations").get_json()["conversations"]
    assert [c["id"] for c in listed] == [kept]
    assert_error(api_a.delete(f"/conversations/{conv}"), 404, "not_found")


def test_deleting_a_message_removes_only_that_message(app, api_a):
    conv, (gone, kept), _ = conversation_with_data(api_a, "c")
    assert api_a.delete(f"/messages/{gone}").status_code == 204
    page = api_a.get(f"/conversations/{conv}").get_json()
    assert [m["id"] for m in page["messages"]] == [kept]
    assert ids(app, Message) == {kept}
    edit = api_a.client.patch(
        f"/api/v1/messages/{gone}", json={"body": "back?"}, headers=api_a.headers
    )
    assert_error(edit, 404, "not_found")
    assert_error(api_a.delete(f"/messages/{gone}"), 404, "not_found")


def test_deleting_an_attachment_removes_only_that_attachment(app, api_a):
    conv, _, (gone, kept) = conversation_with_data(api_a, "c")
    assert api_a.delete(f"/attachments/{gone}").status_code == 204
    assert_error(api_a.get(f"/attachments/{gone}"), 404, "not_found")
    page = api_a.get(f"/conversations/{conv}").get_json()
    assert [a["id"] for a in page["attachments"]] == [kept]
    assert ids(app, Attachment) == {kept}


def test_another_organisations_ids_answer_404_and_delete_nothing(app, api_a, api_b):
    conv, (msg, _), (att, _) = conversation_with_data(api_a, "a's")
    before = (ids(app, Conversation), ids(app, Message), ids(app, Attachment))
    for path in (f"/conversations/{conv}", f"/messages/{msg}", f"/attachments/{att}"):
        assert_error(api_b.delete(path), 404, "not_found")
    for path in (f"/conversations/{msg}", f"/messages/{att}", f"/attachments/{conv}"):
        assert_error(api_a.delete(path), 404, "not_found")  # ids of another kind
    for kind in ("conversations", "messages", "attachments"):
        assert_error(api_a.delete(f"/{kind}/{random_id()}"), 404, "not_found")
    assert (ids(app, Conversation), ids(app, Message), ids(app, Attachment)) == before


def test_deleting_needs_a_valid_token(app, api_a):
    conv, (msg, _), (att, _) = conversation_with_data(api_a, "c")
    anonymous = Api(app.test_client(), None)
    for path in (f"/conversations/{conv}", f"/messages/{msg}", f"/attachments/{att}"):
        assert_error(anonymous.delete(path), 401, "unauthorized")
    assert ids(app, Conversation) == {conv}


def test_data_under_a_lost_key_can_still_be_deleted(app):
    """Erasure needs no key: a Dedicated organisation that lost its key can still delete."""
    with app.app_context():
        db = get_session()
        org = create_org(db, "Lost Ltd", "dedicated")
        db.commit()
        org_id, slug = org.id, org.slug
    api = Api(app.test_client(), make_token(app, org_id))
    enable_byok(app, org_id)
    conv, (msg, _), (att, _) = conversation_with_data(api, "under the lost key")
    with app.app_context():
        db = get_session()
        ops.declare_lost(db, db.get(Organization, org_id), "cli", slug)
        db.commit()
    assert api.get(f"/conversations/{conv}").get_json()["status"] == "unreadable"
    assert api.delete(f"/messages/{msg}").status_code == 204
    assert api.delete(f"/attachments/{att}").status_code == 204
    assert api.delete(f"/conversations/{conv}").status_code == 204
    assert ids(app, Conversation) == ids(app, Message) == ids(app, Attachment) == set()


def test_the_openapi_document_describes_every_delete(api_a):
    paths = api_a.get("/openapi.json").get_json()["paths"]
    for path in ("/conversations/{conv_id}", "/messages/{msg_id}", "/attachments/{att_id}"):
        operation = paths[path]["delete"]
        assert {"204", "401", "404"} <= set(operation["responses"]), path


# ---------------------------------------------------------------- during a rotation


def test_rows_deleted_while_a_rotation_runs_are_not_failures_and_stay_deleted(
    app, orgs, monkeypatch
):
    """Deletes land before the run's first batch and inside a batch's window (between reading
    the rows and the compare-and-swap write): the run completes and verifies, counts nothing
    as failed, retires the old key, and brings nothing back."""
    org = orgs["a"]["id"]
    old = enable_byok(app, org)
    seed(app, org, conversations=6, messages=5, attachments=2)
    api = Api(app.test_client(), make_token(app, org))
    convs = sorted(ids(app, Conversation, org))
    new = crypto.generate_key()
    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org), "cli", b64(old), b64(new))
        db.commit()
        run_id = run.id
    # Deleted after the run counted and planned its items, before any batch ran.
    assert api.delete(f"/conversations/{convs[0]}").status_code == 204
    deleted: set[str] = {convs[0]}
    real_write = engine.write_batch

    def write_after_a_delete(conn, kind, new_key, updates):
        """Delete some of the batch's rows through the API just before its write."""
        victims = [engine.Dialect(conn).read_uid(u[0]) for u in updates][::2]
        path = {"messages": "messages", "attachments": "attachments", "metadata": "conversations"}
        for victim in victims:
            response = api.delete(f"/{path[kind.name]}/{victim}")
            assert response.status_code in (204, 404), response.get_json()
            deleted.add(str(victim))
        return real_write(conn, kind, new_key, updates)

    monkeypatch.setattr(engine, "write_batch", write_after_a_delete)
    app.config["ROTATION_BATCH_ROWS"] = 4
    enqueue_ranges(app, run_id)
    run_worker(app)
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert run.state == "completed", run.error
        assert failure_count(db, run) == 0
        assert sum(r.failed for r in db.scalars(select(RotationRange))) == 0
        progress = run_progress(db, run)
        assert progress.failed == 0 and progress.done == progress.total
        old_row = db.scalar(select(OrgKey).where(OrgKey.key_id == crypto.key_id(old).hex()))
        assert old_row.state == "retired"
        counts = {
            m.__tablename__: db.scalar(select(func.count()).select_from(m))
            for m in (Conversation, Message, Attachment)
        }
    assert len(deleted) > 6, deleted
    left = ids(app, Conversation) | ids(app, Message) | ids(app, Attachment)
    assert not left & deleted, "a deleted row came back"
    assert sum(counts.values()) == len(left) and counts["conversations"] < 6
    assert key_ids(app, org) == {crypto.key_id(new).hex()}
    assert set(plaintext_digest(app, org)) == left  # every survivor reads under the new key


# ---------------------------------------------------------------- writes racing a delete


def delete_behind_the_request(app: Flask, model: type, row_id: str) -> None:
    """Delete a row on another connection, as a concurrent DELETE request would."""
    from sqlalchemy import delete

    with app.extensions["db_engine"].begin() as conn:
        if model is Conversation:
            for child in (Attachment, Message):
                conn.execute(delete(child).where(child.conversation_id == uuid.UUID(row_id)))
        conn.execute(delete(model).where(model.id == uuid.UUID(row_id)))


def test_a_message_added_to_a_conversation_deleted_meanwhile_answers_404(app, api_a, monkeypatch):
    from portal.chat import service as chat

    conv = api_a.conversation("about to go")
    real = chat.add_message

    def add_after_the_delete(session, conversation, author, body):
        """The conversation is deleted after the view found it, before the insert."""
        delete_behind_the_request(app, Conversation, str(conversation.id))
        return real(session, conversation, author, body)

    monkeypatch.setattr(chat, "add_message", add_after_the_delete)
    response = api_a.post_json(f"/conversations/{conv}/messages", {"body": "x", "author": "a"})
    assert_error(response, 404, "not_found")
    assert ids(app, Message) == ids(app, Conversation) == set()


def test_an_attachment_added_to_a_conversation_deleted_meanwhile_answers_404(
    app, api_a, monkeypatch
):
    from portal.chat import service as chat

    conv = api_a.conversation("about to go")
    real = chat.add_attachment

    def add_after_the_delete(session, conversation, *args):
        """The conversation is deleted after the view found it, before the insert."""
        delete_behind_the_request(app, Conversation, str(conversation.id))
        return real(session, conversation, *args)

    monkeypatch.setattr(chat, "add_attachment", add_after_the_delete)
    assert_error(api_a.upload(conv, b"x", "x.bin", "text/plain"), 404, "not_found")
    assert ids(app, Attachment) == set()


def test_an_edit_of_a_message_deleted_meanwhile_answers_404(app, api_a, monkeypatch):
    from portal.chat import service as chat

    conv = api_a.conversation()
    msg = api_a.message(conv, "before")
    real = chat.edit_message

    def edit_after_the_delete(session, message, body):
        """The message is deleted after the view found it, before the update."""
        delete_behind_the_request(app, Message, str(message.id))
        return real(session, message, body)

    monkeypatch.setattr(chat, "edit_message", edit_after_the_delete)
    edit = api_a.client.patch(f"/api/v1/messages/{msg}", json={"body": "x"}, headers=api_a.headers)
    assert_error(edit, 404, "not_found")
    assert ids(app, Message) == set()


def test_deleting_an_item_a_rotation_could_not_move_lets_a_retry_retire_the_old_key(app, orgs):
    """The way out for a bad row: delete it, retry the run's failed items, and the old key
    is retired with nothing left under it."""
    from sqlalchemy import update

    org = orgs["a"]["id"]
    old = enable_byok(app, org)
    seed(app, org, conversations=1, messages=3, attachments=0)
    api = Api(app.test_client(), make_token(app, org))
    bad, donor = sorted(ids(app, Message, org))[:2]
    with app.extensions["db_engine"].begin() as conn:
        blob = conn.execute(select(Message.body_ct).where(Message.id == uuid.UUID(donor))).scalar()
        conn.execute(update(Message).where(Message.id == uuid.UUID(bad)).values(body_ct=blob))
    with app.app_context():
        db = get_session()
        run = start_rotation(
            db, db.get(Organization, org), "cli", b64(old), b64(crypto.generate_key())
        )
        db.commit()
        run_id = run.id
    enqueue_ranges(app, run_id)
    run_worker(app)
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert run.state == "completed" and failure_count(db, run) == 1
    assert api.delete(f"/messages/{bad}").status_code == 204
    with app.app_context():
        db = get_session()
        retry_failed(db, db.get(RotationRun, run_id), "cli")
        db.commit()
    enqueue_ranges(app, run_id)
    run_worker(app)
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert run.state == "completed" and failure_count(db, run) == 0, run.error
        old_row = db.scalar(select(OrgKey).where(OrgKey.key_id == crypto.key_id(old).hex()))
        assert old_row.state == "retired"
    assert bad not in ids(app, Message)
