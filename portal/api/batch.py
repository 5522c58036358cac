"""The data API's batch write: many messages of one conversation, all stored or none."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, jsonify

from portal.api import bp
from portal.api.errors import ApiError
from portal.api.requests import conversation_or_404, json_body, message_fields
from portal.chat import service
from portal.db import get_session


def batch_items(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the batch's (author, body) pairs, or refuse it with every bad message's error."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ApiError(400, "missing_field", "'messages' is required and must be a list")
    limit = current_app.config["MAX_BATCH_MESSAGES"]
    if not 1 <= len(messages) <= limit:
        raise ApiError(400, "bad_batch_size", f"'messages' must hold 1 to {limit} messages")
    items, errors = [], []
    for index, fields in enumerate(messages):
        try:
            items.append(message_fields(fields))
        except ApiError as exc:
            errors.append(exc.item(index))
    if errors:
        raise ApiError(
            400,
            "bad_batch",
            f"{len(errors)} of {len(messages)} messages are invalid (see items); "
            "nothing was stored",
            errors,
        )
    return items


@bp.post("/conversations/<uuid:conv_id>/messages:batch")
def add_messages(conv_id: uuid.UUID):
    """Add up to MAX_BATCH_MESSAGES messages to a conversation in one transaction."""
    # Another organisation's conversation is a 404 whatever the body holds.
    conv = conversation_or_404(conv_id)
    items = batch_items(json_body())
    db = get_session()
    ids = service.add_messages(db, conv, items)
    db.commit()
    return jsonify(ids=[str(i) for i in ids]), 201
