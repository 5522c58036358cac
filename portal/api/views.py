"""The data API's request hooks (bearer tokens, no caching) and its OpenAPI document.

The endpoints live by resource: portal/api/conversations.py, attachments.py, deletes.py.
"""

from __future__ import annotations

from flask import Response, current_app, g, jsonify, request

from portal.api import bp
from portal.api.auth import request_token
from portal.api.errors import ApiError
from portal.api.openapi import openapi_document


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


@bp.get("/openapi.json")
def openapi():
    """Publish the API's OpenAPI document."""
    # Behind a path prefix (SCRIPT_NAME, or a trusted proxy's X-Forwarded-Prefix) the API
    # lives under it too, and generated clients take their base URL from here.
    limits = {
        k: current_app.config[k]
        for k in ("MAX_TITLE_CHARS", "MAX_METADATA_BYTES", "MAX_BATCH_MESSAGES")
    }
    return jsonify(openapi_document(request.script_root + (bp.url_prefix or ""), limits))
