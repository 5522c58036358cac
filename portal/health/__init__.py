"""Liveness of the portal's two dependencies, for load balancers and operators."""

import contextlib

from flask import Blueprint, jsonify
from sqlalchemy import text

from portal.db import get_session
from portal.keys import custody as registry
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
    body: dict = {"status": "ok" if healthy else "unavailable", **checks}
    services = key_services()
    if services:
        # Reported, never a reason for 503: one customer's key service being down must not
        # take the portal out of a load balancer for every other organisation.
        body["key_services"] = services
    return jsonify(body), 200 if healthy else 503


def key_services() -> dict[str, dict]:
    """Ping every configured key service (through its breaker): reachable, unreachable, denied."""
    report: dict[str, dict] = {}
    for name, client in registry.key_services().items():
        # A failed ping raises; the client's health records what happened.
        with contextlib.suppress(registry.CustodyError):
            client.ping()
        report[name] = client.health().as_json()
    for name, problem in registry.service_problems().items():
        report[name] = {"provider": name, "state": "not_started", "last_error": problem}
    return report
