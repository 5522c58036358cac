"""Reading API requests (JSON bodies, pages, cursors) and finishing their responses."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import g, request

from portal import crypto
from portal.api.errors import ApiError
from portal.chat import metadata, service
from portal.chat.models import Conversation
from portal.db import get_session

MAX_PAGE = 500
MAX_AUTHOR_CHARS = 200  # the width of messages.author


def json_body(*required: str) -> dict[str, Any]:
    """Return the request's JSON object after checking its content type and fields."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send application/json")
    too_deep = ApiError(
        400, "too_deep", f"JSON values may nest at most {metadata.MAX_NESTING} levels deep"
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
    if metadata.nests_deeper(body, metadata.MAX_NESTING + 1):
        raise too_deep
    try:
        # JSON may escape lone surrogates ("\ud800"), which no UTF-8 text can hold: refuse
        # them here instead of failing with a 500 when the value is encoded for encryption.
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(400, "bad_json", "strings must be valid Unicode") from None
    require_text(body, *required)
    return body


def require_text(fields: dict[str, Any], *names: str) -> None:
    """Refuse fields that are missing, not strings, or blank."""
    for name in names:
        if not isinstance(fields.get(name), str) or not fields[name].strip():
            raise ApiError(400, "missing_field", f"'{name}' is required and must be a string")


def message_fields(fields: Any) -> tuple[str, str]:
    """Check one message of a request and return its (author, body).

    The single and the batch write both go through here, so they accept the same messages.
    """
    if not isinstance(fields, dict):
        raise ApiError(400, "bad_message", "a message must be a JSON object")
    require_text(fields, "body", "author")
    author = fields["author"]
    if len(author) > MAX_AUTHOR_CHARS:
        raise ApiError(400, "bad_author", f"'author' may be at most {MAX_AUTHOR_CHARS} characters")
    if "\x00" in author:
        # The author is stored in the clear, and PostgreSQL text cannot hold NUL characters.
        raise ApiError(400, "bad_author", "'author' may not contain NUL characters")
    return author, fields["body"]


def _no_constant(name: str) -> None:
    """Refuse NaN and Infinity, which Python's json accepts but JSON does not."""
    raise ValueError(f"{name} is not JSON")


def page_limit(default: int = 100) -> int:
    """Read ``limit`` from the query string (1..500)."""
    raw = request.args.get("limit", str(default))
    # ASCII digits only and short: str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def uuid_arg(name: str) -> uuid.UUID | None:
    """Read an optional UUID cursor from the query string."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"'{name}' must be an id") from None


def conversation_or_404(conv_id: uuid.UUID) -> Conversation:
    """Load a conversation of the token's organisation or answer 404."""
    conv = service.get_conversation(get_session(), g.company_id, conv_id)
    if conv is None:
        raise ApiError(404, "not_found", "no such conversation")
    return conv


def finish(reader: service.Reader, response: Any) -> Any:
    """Audit the request's decryption failures, then return the response."""
    if reader.failures:
        reader.record_failures(g.api_token)
        get_session().commit()
    return response


def text_or_unreadable(reader: service.Reader, row: Any, ad_name: str) -> Any:
    """Decrypt a text column of a row, or describe why it is unreadable."""
    try:
        return reader.text(row, ad_name)
    except crypto.DecryptionError as exc:
        return service.unreadable(exc)
