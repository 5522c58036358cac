"""The data API (``/api/v1``): JSON over bearer tokens, one organisation per token."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from portal.api import attachments, batch, conversations, deletes, views  # noqa: E402,F401
