"""Liveness of the portal's two dependencies, for load balancers and operators."""

from flask import Blueprint, jsonify
from sqlalchemy import text

from portal.db import get_session
from portal.redis_conn import get_redis

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Report whether the database and Redis answer: 200 when both do, 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        get_session().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "down"
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "unavailable", **checks}
    return jsonify(body), 200 if healthy else 503
