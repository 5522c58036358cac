"""Data API endpoints of attachments: upload to a conversation, download the bytes."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, current_app, g, jsonify, request
from sqlalchemy import select

from portal import crypto
from portal.api import bp
from portal.api.errors import ApiError
from portal.api.requests import conversation_or_404, finish, text_or_unreadable
from portal.chat import service
from portal.chat.models import Attachment
from portal.db import get_session

# The content type is stored in the clear in a String(200) column; PostgreSQL would refuse more.
MAX_CONTENT_TYPE = 200


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
    conv = conversation_or_404(conv_id)
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


def attachment_summary(reader: service.Reader, att: Attachment) -> dict[str, Any]:
    """Describe an attachment without its content."""
    return {
        "id": str(att.id),
        "filename": text_or_unreadable(reader, att, "filename"),
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
        content = reader.column(att, "content")
    except crypto.DecryptionError as exc:
        return finish(reader, (jsonify(id=str(att.id), **service.unreadable(exc)), 409))
    response = Response(content, mimetype=att.content_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = "attachment"
    return response
