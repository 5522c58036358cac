"""Data API endpoints: conversations, messages and attachments."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Response, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import defer

from portal import crypto
from portal.api import bp
from portal.api.auth import request_token
from portal.api.errors import ApiError
from portal.api.openapi import openapi_document
from portal.chat import service
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session

MAX_PAGE = 500
# The content type is stored in the clear in a String(200) column; PostgreSQL would refuse more.
MAX_CONTENT_TYPE = 200


@bp.after_app_request
def _no_store(response: Response) -> Response:
    """Never let a browser or proxy keep a data-API answer: most carry decrypted content.

    App-wide, so that answers to unknown /api/v1 paths (which match no API route) get it too.
    """
    if request.path == bp.url_prefix or request.path.startswith(f"{bp.url_prefix}/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.before_request
def _authenticate() -> None:
    """Resolve the bearer token to its organisation (the OpenAPI document is public)."""
    if request.endpoint == "api.openapi":
        return
    row = request_token()
    if row is None:
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    g.api_token = row
    g.company_id = row.company_id


def _json_body(*required: str) -> dict[str, Any]:
    """Return the request's JSON object after checking its content type and fields."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send application/json")
    too_deep = ApiError(
        400, "too_deep", f"JSON values may nest at most {service.MAX_NESTING} levels deep"
    )
    try:
        body = json.loads(request.get_data(cache=False) or b"null", parse_constant=_no_constant)
    except RecursionError:
        raise too_deep from None
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    # Every value of the body (metadata included) is bounded, so reading it back and encoding
    # it as JSON can never exhaust the stack.
    if service.nests_deeper(body, service.MAX_NESTING + 1):
        raise too_deep
    try:
        # JSON may escape lone surrogates ("\ud800"), which no UTF-8 text can hold: refuse
        # them here instead of failing with a 500 when the value is encoded for encryption.
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(400, "bad_json", "strings must be valid Unicode") from None
    for name in required:
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise ApiError(400, "missing_field", f"'{name}' is required and must be a string")
    return body


def _no_constant(name: str) -> None:
    """Refuse NaN and Infinity, which Python's json accepts but JSON does not."""
    raise ValueError(f"{name} is not JSON")


def _limit(default: int = 100) -> int:
    """Read ``limit`` from the query string (1..500)."""
    raw = request.args.get("limit", str(default))
    # ASCII digits only and short: str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _uuid_arg(name: str) -> uuid.UUID | None:
    """Read an optional UUID cursor from the query string."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"'{name}' must be an id") from None


def _conversation(conv_id: uuid.UUID) -> Conversation:
    """Load a conversation of the token's organisation or answer 404."""
    conv = service.get_conversation(get_session(), g.company_id, conv_id)
    if conv is None:
        raise ApiError(404, "not_found", "no such conversation")
    return conv


def _finish(reader: service.Reader, response: Any) -> Any:
    """Audit the request's decryption failures, then return the response."""
    if reader.failures:
        reader.record_failures(g.api_token)
        get_session().commit()
    return response


def _text(reader: service.Reader, table: str, column: str, row_id, blob: bytes) -> Any:
    """Decrypt a text value, or describe why it is unreadable."""
    try:
        return reader.open(table, column, row_id, blob).decode()
    except crypto.DecryptionError as exc:
        return service.unreadable(exc)


def _conversation_summary(reader: service.Reader, conv: Conversation) -> dict[str, Any]:
    """Describe a conversation: title and metadata, or why they are unreadable."""
    out: dict[str, Any] = {"id": str(conv.id), "created_at": service.iso(conv.created_at)}
    try:
        out["title"] = reader.open("conversations", "title", conv.id, conv.title_ct).decode()
        meta = reader.open("conversations", "metadata", conv.id, conv.metadata_ct)
    except crypto.DecryptionError as exc:
        out.update(service.unreadable(exc))
        return out
    document = service.decode_metadata(meta)
    if document is None:
        # Stored before writes were bounded: readable, but too deep to send back as JSON.
        out.update(status="unreadable", reason="too_deep")
    else:
        out["metadata"] = document
    return out


@bp.post("/conversations")
def create_conversation():
    """Create a conversation."""
    body = _json_body("title")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ApiError(400, "bad_metadata", "'metadata' must be a JSON object")
    max_title = current_app.config["MAX_TITLE_CHARS"]
    if len(body["title"]) > max_title:
        raise ApiError(400, "bad_title", f"'title' may be at most {max_title} characters")
    max_meta = current_app.config["MAX_METADATA_BYTES"]
    if len(service.encode_metadata(metadata)) > max_meta:
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
    after_id = _uuid_arg("after")
    after = service.get_conversation(db, g.company_id, after_id) if after_id else None
    if after_id and after is None:
        raise ApiError(400, "bad_after", "'after' names no conversation of yours")
    limit = _limit()
    reader = service.Reader(db, g.company_id)
    rows = service.list_conversations(db, g.company_id, limit, after)
    items = [_conversation_summary(reader, conv) for conv in rows]
    cursor = items[-1]["id"] if len(items) == limit else None
    return _finish(reader, jsonify(conversations=items, next_after=cursor))


@bp.post("/conversations/<uuid:conv_id>/messages")
def add_message(conv_id: uuid.UUID):
    """Add a message to a conversation."""
    body = _json_body("body", "author")
    if len(body["author"]) > 200:
        raise ApiError(400, "bad_author", "'author' may be at most 200 characters")
    if "\x00" in body["author"]:
        # The author is stored in the clear, and PostgreSQL text cannot hold NUL characters.
        raise ApiError(400, "bad_author", "'author' may not contain NUL characters")
    db = get_session()
    msg = service.add_message(db, _conversation(conv_id), body["author"], body["body"])
    db.commit()
    return jsonify(id=str(msg.id)), 201


@bp.patch("/messages/<uuid:msg_id>")
def edit_message(msg_id: uuid.UUID):
    """Replace a message's body (re-encrypted under the organisation's current key)."""
    body = _json_body("body")
    db = get_session()
    msg = db.scalar(select(Message).where(Message.id == msg_id, Message.company_id == g.company_id))
    if msg is None:
        raise ApiError(404, "not_found", "no such message")
    service.edit_message(db, msg, body["body"])
    db.commit()
    return jsonify(id=str(msg.id))


@bp.post("/conversations/<uuid:conv_id>/attachments")
def add_attachment(conv_id: uuid.UUID):
    """Attach a file (multipart field ``file``) to a conversation."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data")
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "missing_field", "the multipart field 'file' is required")
    content_type = upload.mimetype or "application/octet-stream"
    if len(content_type) > MAX_CONTENT_TYPE or "\x00" in content_type:
        raise ApiError(400, "bad_content_type", "the file's content type is too long or invalid")
    conv = _conversation(conv_id)
    limit = current_app.config["MAX_ATTACHMENT_BYTES"]
    content = upload.stream.read(limit + 1)
    if len(content) > limit:
        raise ApiError(413, "too_large", f"attachments may be at most {limit} bytes")
    db = get_session()
    att = service.add_attachment(
        db,
        conv,
        upload.filename or "attachment",
        content_type,
        content,
    )
    db.commit()
    return jsonify(id=str(att.id), size=att.size), 201


@bp.get("/conversations/<uuid:conv_id>")
def get_conversation(conv_id: uuid.UUID):
    """Return a conversation with a page of its messages and its attachment list."""
    db = get_session()
    conv = _conversation(conv_id)
    after_id = _uuid_arg("after")
    after = db.get(Message, after_id) if after_id else None
    if after_id and (after is None or after.conversation_id != conv.id):
        raise ApiError(400, "bad_after", "'after' names no message of this conversation")
    limit = _limit()
    reader = service.Reader(db, g.company_id)
    out = _conversation_summary(reader, conv)
    messages = service.list_messages(db, conv, limit, after)
    out["messages"] = [
        {
            "id": str(m.id),
            "author": m.author,
            "created_at": service.iso(m.created_at),
            "body": _text(reader, "messages", "body", m.id, m.body_ct),
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
    out["attachments"] = [_attachment_summary(reader, att) for att in attachments]
    return _finish(reader, jsonify(out))


def _attachment_summary(reader: service.Reader, att: Attachment) -> dict[str, Any]:
    """Describe an attachment without its content."""
    return {
        "id": str(att.id),
        "filename": _text(reader, "attachments", "filename", att.id, att.filename_ct),
        "content_type": att.content_type,
        "size": att.size,
        "created_at": service.iso(att.created_at),
    }


@bp.get("/attachments/<uuid:att_id>")
def get_attachment(att_id: uuid.UUID):
    """Return an attachment's bytes with its content type."""
    db = get_session()
    # Filtered by organisation in SQL: another organisation's blob is never even loaded.
    att = db.scalar(
        select(Attachment).where(Attachment.id == att_id, Attachment.company_id == g.company_id)
    )
    if att is None:
        raise ApiError(404, "not_found", "no such attachment")
    reader = service.Reader(db, g.company_id)
    try:
        content = reader.open("attachments", "content", att.id, att.content_ct)
    except crypto.DecryptionError as exc:
        return _finish(reader, (jsonify(id=str(att.id), **service.unreadable(exc)), 409))
    response = Response(content, mimetype=att.content_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = "attachment"
    return response


@bp.get("/openapi.json")
def openapi():
    """Publish the API's OpenAPI document."""
    # Behind a path prefix (SCRIPT_NAME, or a trusted proxy's X-Forwarded-Prefix) the API
    # lives under it too, and generated clients take their base URL from here.
    limits = {k: current_app.config[k] for k in ("MAX_TITLE_CHARS", "MAX_METADATA_BYTES")}
    return jsonify(openapi_document(request.script_root + (bp.url_prefix or ""), limits))
