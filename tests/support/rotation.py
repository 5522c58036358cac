"""Rotation set-up: an organisation with BYOK on, seeded data, runs started and worked off."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

from flask import Flask
from flask.testing import FlaskClient
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import select

from portal import crypto
from portal.chat import service as chat
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session
from portal.keys import operations as ops
from portal.models import Organization
from portal.redis_conn import connect, make_queue
from portal.rotation.start import start_rotation
from tests.support.web import PASSWORD, csrf_token


def b64(key: bytes) -> str:
    """Standard base64 of a key."""
    return base64.b64encode(key).decode()


def enable_byok(app: Flask, org_id: uuid.UUID) -> bytes:
    """Enable a fresh BYOK key for the organisation and return it."""
    key = crypto.generate_key()
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        fp = ops.test_key(db, org, "cli", b64(key))
        ops.enable(db, org, "cli", b64(key), fp)
        db.commit()
    return key


def seed(
    app: Flask,
    org_id: uuid.UUID,
    conversations: int = 3,
    messages: int = 10,
    attachments: int = 1,
    attachment_bytes: int = 1000,
) -> None:
    """Write chat data through the service layer."""
    with app.app_context():
        db = get_session()
        for c in range(conversations):
            conv = chat.create_conversation(
                db, org_id, f"conversation {c}", {"n": c, "tags": ["x"]}
            )
            for m in range(messages):
                chat.add_message(db, conv, "user", f"message {m} of {c} " + "é" * (m % 7))
            for a in range(attachments):
                chat.add_attachment(
                    db,
                    conv,
                    f"file-{c}-{a}.bin",
                    "application/octet-stream",
                    bytes([(c + a) % 256]) * attachment_bytes,
                )
        db.commit()


def plaintext_digest(app: Flask, org_id: uuid.UUID) -> dict[str, str]:
    """Decrypt every item of the organisation and hash the plaintext, per item id."""
    out: dict[str, str] = {}
    with app.app_context():
        db = get_session()
        reader = chat.Reader(db, org_id)
        for conv in db.scalars(select(Conversation).where(Conversation.company_id == org_id)):
            title = reader.column(conv, "title")
            meta = reader.column(conv, "metadata")
            out[str(conv.id)] = hashlib.sha256(title + b"\0" + meta).hexdigest()
        for msg in db.scalars(select(Message).where(Message.company_id == org_id)):
            out[str(msg.id)] = hashlib.sha256(reader.column(msg, "body")).hexdigest()
        for att in db.scalars(select(Attachment).where(Attachment.company_id == org_id)):
            name = reader.column(att, "filename")
            content = reader.column(att, "content")
            out[str(att.id)] = hashlib.sha256(name + b"\0" + content).hexdigest()
    return out


def key_ids(app: Flask, org_id: uuid.UUID) -> set[str]:
    """The set of key ids the organisation's stored items are under."""
    with app.app_context():
        db = get_session()
        found: set[str] = set()
        for model in (Conversation, Message, Attachment):
            found |= set(db.scalars(select(model.key_id).where(model.company_id == org_id)))
        return found


def run_worker(app: Flask) -> None:
    """Run queued jobs in this process until the queue is empty (RQ's testing pattern)."""
    from portal.worker_app import set_app

    set_app(app)
    connection = connect(app)
    queue = make_queue(connection, app.config["RQ_QUEUE"])
    SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False
    )


def start_and_enqueue(app: Flask, org_id: uuid.UUID, current: bytes, new: bytes) -> uuid.UUID:
    """Start a rotation through the service layer and enqueue its ranges."""
    from portal.rotation.queue import enqueue_ranges

    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_id), "cli", b64(current), b64(new))
        db.commit()
        run_id = run.id
    enqueue_ranges(app, run_id)
    return run_id


def hx_headers(client: FlaskClient, path: str = "/settings/compliance") -> dict[str, str]:
    """htmx headers with the session's CSRF token."""
    return {"HX-Request": "true", "X-CSRFToken": csrf_token(client, path)}


def start_via_wizard(client: FlaskClient, old: bytes, new: bytes):
    """Test Keys, then Perform Rotation, as the wizard does."""
    headers = hx_headers(client)
    data = {"current_key": b64(old), "new_key": b64(new) + "\n"}
    tested = client.post("/settings/compliance/rotate/test", data=data, headers=headers)
    assert tested.status_code == 200, tested.get_data(as_text=True)
    fp = re.search(r'name="tested_fingerprint" value="([^"]+)"', tested.get_data(as_text=True))
    assert fp and fp.group(1) == crypto.fingerprint(crypto.key_id(new))
    return client.post(
        "/settings/compliance/rotate/start",
        data={**data, "tested_fingerprint": fp.group(1), "password": PASSWORD},
        headers=headers,
    )
