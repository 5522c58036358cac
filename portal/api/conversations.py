"""Data API endpoints of conversations and their messages."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, g, jsonify
from sqlalchemy import select
from sqlalchemy.orm import defer

from portal import crypto
from portal.api import bp
from portal.api.attachments import attachment_summary
from portal.api.errors import ApiError
from portal.api.requests import (
    conversation_or_404,
    finish,
    json_body,
    message_fields,
    page_limit,
    text_or_unreadable,
    uuid_arg,
)
from portal.chat import service
from portal.chat.metadata import decode_metadata, encode_metadata
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session


def _conversation_summary(reader: service.Reader, conv: Conversation) -> dict[str, Any]:
    """Describe a conversation: title and metadata, or why they are unreadable."""
    out: dict[str, Any] = {"id": str(conv.id), "created_at": service.iso(conv.created_at)}
    try:
        out["title"] = reader.text(conv, "title")
        meta = reader.column(conv, "metadata")
    except crypto.DecryptionError as exc:
        out.update(service.unreadable(exc))
        return out
    document = decode_metadata(meta)
    if document is None:
        # Stored before writes were bounded: readable, but too deep to send back as JSON.
        out.update(status="unreadable", reason="too_deep")
    else:
        out["metadata"] = document
    return out


@bp.post("/conversations")
def create_conversation():
    """Create a conversation."""
    body = json_body("title")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ApiError(400, "bad_metadata", "'metadata' must be a JSON object")
    max_title = current_app.config["MAX_TITLE_CHARS"]
    if len(body["title"]) > max_title:
        raise ApiError(400, "bad_title", f"'title' may be at most {max_title} characters")
    max_meta = current_app.config["MAX_METADATA_BYTES"]
    if len(encode_metadata(metadata)) > max_meta:
        raise ApiError(
            400, "bad_metadata", f"'metadata' may be at most {max_meta} bytes as compact JSON"
        )
    db = get_session()
    conv = service.create_conversation(db, g.company_id, body["title"], metadata)
    db.commit()
    return jsonify(id=str(conv.id)), 201


@bp.get("/conversations")
def list_conversations():
    """List the organisation's conversations, oldest first, ``after`` a cursor id."""
    db = get_session()
    after_id = uuid_arg("after")
    after = service.get_conversation(db, g.company_id, after_id) if after_id else None
    if after_id and after is None:
        raise ApiError(400, "bad_after", "'after' names no conversation of yours")
    limit = page_limit()
    reader = service.Reader(db, g.company_id)
    rows = service.list_conversations(db, g.company_id, limit, after)
    items = [_conversation_summary(reader, conv) for conv in rows]
    cursor = items[-1]["id"] if len(items) == limit else None
    return finish(reader, jsonify(conversations=items, next_after=cursor))


@bp.post("/conversations/<uuid:conv_id>/messages")
def add_message(conv_id: uuid.UUID):
    """Add a message to a conversation."""
    author, text = message_fields(json_body())
    db = get_session()
    msg = service.add_message(db, conversation_or_404(conv_id), author, text)
    db.commit()
    return jsonify(id=str(msg.id)), 201


@bp.patch("/messages/<uuid:msg_id>")
def edit_message(msg_id: uuid.UUID):
    """Replace a message's body (re-encrypted under the organisation's current key)."""
    body = json_body("body")
    db = get_session()
    msg = db.scalar(select(Message).where(Message.id == msg_id, Message.company_id == g.company_id))
    if msg is None:
        raise ApiError(404, "not_found", "no such message")
    service.edit_message(db, msg, body["body"])
    db.commit()
    return jsonify(id=str(msg.id))


@bp.get("/conversations/<uuid:conv_id>")
def get_conversation(conv_id: uuid.UUID):
    """Return a conversation with a page of its messages and its attachment list."""
    db = get_session()
    conv = conversation_or_404(conv_id)
    after_id = uuid_arg("after")
    after = db.get(Message, after_id) if after_id else None
    if after_id and (after is None or after.conversation_id != conv.id):
        raise ApiError(400, "bad_after", "'after' names no message of this conversation")
    limit = page_limit()
    reader = service.Reader(db, g.company_id)
    out = _conversation_summary(reader, conv)
    messages = service.list_messages(db, conv, limit, after)
    out["messages"] = [
        {
            "id": str(m.id),
            "author": m.author,
            "created_at": service.iso(m.created_at),
            "body": text_or_unreadable(reader, m, "body"),
        }
        for m in messages
    ]
    out["next_after"] = out["messages"][-1]["id"] if len(messages) == limit else None
    attachments = db.scalars(
        select(Attachment)
        .options(defer(Attachment.content_ct))
        .where(Attachment.conversation_id == conv.id, Attachment.company_id == g.company_id)
        .order_by(Attachment.created_at, Attachment.id)
    )
    out["attachments"] = [attachment_summary(reader, att) for att in attachments]
    return finish(reader, jsonify(out))
