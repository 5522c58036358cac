"""Deleting data through the API: a conversation with everything in it, a message, a file.

Any live token of the organisation may delete, as it may write (tokens have no scopes).
Deleting needs no key, so data under a lost or revoked key can still be erased.
"""

from __future__ import annotations

import uuid

from flask import Response, g

from portal.api import bp
from portal.api.errors import ApiError
from portal.chat import service
from portal.db import get_session


def _deleted(found: bool, what: str) -> Response:
    """Commit and answer 204, or answer 404 for an id the organisation does not have."""
    if not found:
        get_session().rollback()
        raise ApiError(404, "not_found", f"no such {what}")
    get_session().commit()
    return Response(status=204)


@bp.delete("/conversations/<uuid:conv_id>")
def delete_conversation(conv_id: uuid.UUID):
    """Delete a conversation with its messages and attachments."""
    return _deleted(
        service.delete_conversation(get_session(), g.company_id, conv_id), "conversation"
    )


@bp.delete("/messages/<uuid:msg_id>")
def delete_message(msg_id: uuid.UUID):
    """Delete a message."""
    return _deleted(service.delete_message(get_session(), g.company_id, msg_id), "message")


@bp.delete("/attachments/<uuid:att_id>")
def delete_attachment(att_id: uuid.UUID):
    """Delete an attachment."""
    return _deleted(service.delete_attachment(get_session(), g.company_id, att_id), "attachment")
