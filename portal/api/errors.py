"""How the data API answers errors: one JSON shape, ``{"error": code, "message": text}``.

A refused batch adds ``items``: the error of each refused message, ``{"index", "code",
"message"}``, so a client can fix them all at once.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, g, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import RequestEntityTooLarge

from portal.api import bp
from portal.audit import aggregate
from portal.audit.actions import Action
from portal.db import get_session
from portal.keys import policy
from portal.keys.policy import ByokRequired
from portal.keys.service import KeyUnavailable


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": text}`` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, items: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.items = status, code, message, items

    def item(self, index: int) -> dict[str, Any]:
        """This error as the entry of the item at ``index`` of a refused batch."""
        return {"index": index, "code": self.code, "message": self.message}


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    """Answer an ApiError as JSON."""
    extra = {} if exc.items is None else {"items": exc.items}
    return jsonify(error=exc.code, message=exc.message, **extra), exc.status


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge):
    """A body over MAX_CONTENT_LENGTH, refused before it is read: nothing was stored."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    message = f"a request to the data API may be at most {limit} bytes; send less per request"
    return jsonify(error="too_large", message=message), 413


@bp.errorhandler(KeyUnavailable)
def _key_unavailable(exc: KeyUnavailable):
    """The organisation's key cannot encrypt: nothing is stored.

    A key service that refused access answers 403 (retrying will not help until the customer
    restores access); one that did not answer, 503 with Retry-After (the breaker's pause).
    """
    session = get_session()
    session.rollback()
    _audit_key_service(session, exc)
    response = jsonify(error=exc.code, message=str(exc))
    if exc.code == "key_access_revoked":
        return response, 403
    if exc.code == "key_service_unreachable":
        response.headers["Retry-After"] = str(max(1, exc.retry_after))
    return response, 503


# How a write the organisation's key service refused or left unanswered is audited.
KEY_SERVICE_REFUSALS = {
    "key_access_revoked": Action.KEY_SERVICE_DENIED,
    "key_service_unreachable": Action.KEY_SERVICE_UNREACHABLE,
}


def _audit_key_service(session, exc: KeyUnavailable) -> None:
    """Record a write the key service refused or left unanswered, aggregated per minute."""
    company_id = getattr(g, "company_id", None)
    if exc.code not in KEY_SERVICE_REFUSALS or company_id is None:
        return
    active = policy.active_key(session, company_id)
    key_id = active.key_id if active is not None else "unknown"
    try:
        aggregate.record(
            session,
            company_id,
            key_id,
            "writes",
            [f"{request.method} {request.path}"],
            getattr(g, "api_token", None),
            action=KEY_SERVICE_REFUSALS[exc.code],
        )
        session.commit()
    except SQLAlchemyError:
        session.rollback()  # the refusal itself is still answered


@bp.errorhandler(OperationalError)
def _storage_error(exc: OperationalError):
    """The database refused the write (full disk, lost connection): nothing was stored."""
    get_session().rollback()
    logging.getLogger("portal.errors").error("data API storage error: %s", type(exc.orig))
    full = "full" in str(exc.orig).lower()
    code, status = ("storage_full", 507) if full else ("storage_unavailable", 503)
    message = (
        "The server has no room to store this; nothing was stored."
        if full
        else "The database is unavailable; nothing was stored. Try again."
    )
    return jsonify(error=code, message=message), status


@bp.errorhandler(IntegrityError)
def _parent_deleted(exc: IntegrityError):
    """A message or file for a conversation deleted after the request found it: the insert
    breaks the foreign key. Nothing was stored, and the conversation is gone."""
    get_session().rollback()
    return jsonify(error="not_found", message="no such conversation (it was just deleted)"), 404


@bp.errorhandler(StaleDataError)
def _row_deleted(exc: StaleDataError):
    """An edit of a message deleted after the request found it: the update matched no row."""
    get_session().rollback()
    return jsonify(error="not_found", message="no such message (it was just deleted)"), 404


@bp.errorhandler(ByokRequired)
def _byok_required(exc: ByokRequired):
    """BYOK is mandatory here and not enabled yet: nothing is stored, reads still work."""
    return jsonify(error="byok_required", message=str(exc)), 409
