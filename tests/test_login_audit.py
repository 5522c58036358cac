"""Failed sign-ins on an organisation's accounts reach its own audit log, revealing nothing."""

from __future__ import annotations

import json
import re
import statistics
import time

from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.events import PLATFORM_CHAIN
from tests.support.web import csrf_token, login


def _failed(app) -> list[AuditEvent]:
    """Every auth.login_failed event, oldest first."""
    with app.app_context():
        return list(
            get_session().scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "auth.login_failed")
                .order_by(AuditEvent.id)
            )
        )


def test_a_failed_sign_in_is_in_the_organisations_chain_and_the_platform_chain(app, client, orgs):
    assert login(client, "  Member@A.example ", "wrong password").status_code == 401
    events = _failed(app)
    by_chain = {e.chain_id: e for e in events}
    assert set(by_chain) == {PLATFORM_CHAIN, orgs["a"]["id"]}, [e.chain_id for e in events]
    own = by_chain[orgs["a"]["id"]]
    assert own.company_id == orgs["a"]["id"] and own.outcome == "failure"
    assert json.loads(own.details) == {"email": "member@a.example"}
    assert own.source_ip == by_chain[PLATFORM_CHAIN].source_ip
    # The organisation's admin sees it in the Audit Log; the other organisation does not.
    admin = app.test_client()
    assert login(admin, orgs["users"]["admin_a"]).status_code == 302
    page = admin.get("/settings/audit?type=auth.login_failed").get_data(as_text=True)
    assert "member@a.example" in page
    other = app.test_client()
    assert login(other, orgs["users"]["admin_b"]).status_code == 302
    page = other.get("/settings/audit?type=auth.login_failed").get_data(as_text=True)
    assert "member@a.example" not in page


def test_an_unknown_email_or_a_support_account_goes_to_the_platform_chain_only(app, client, orgs):
    assert login(client, "nobody@a.example", "wrong password").status_code == 401
    assert login(client, orgs["users"]["support"], "wrong password").status_code == 401
    assert {e.chain_id for e in _failed(app)} == {PLATFORM_CHAIN}
    assert len(_failed(app)) == 2


def _answer(client, email: str) -> tuple[int, str, list[str]]:
    """Status, page (CSRF token masked) and header names of a failed sign-in."""
    response = login(client, email, "wrong password")
    html = re.sub(r"[\w-]{20,}\.[\w-]+\.[\w-]+", "TOKEN", response.text)
    html = html.replace(email, "EMAIL")
    return response.status_code, html, sorted(response.headers.keys())


def test_the_answer_does_not_tell_whether_the_email_exists(app, orgs):
    known = _answer(app.test_client(), orgs["users"]["admin_a"])
    unknown = _answer(app.test_client(), "nobody@a.example")
    assert known == unknown
    assert known[0] == 401


def test_an_unknown_email_still_costs_a_password_verification(app, orgs):
    app.config["RATELIMIT_LOGIN_ADDRESS"] = app.config["RATELIMIT_LOGIN_ACCOUNT"] = "1000/minute"

    def timed(email: str) -> float:
        client = app.test_client()
        token = csrf_token(client)
        started = time.perf_counter()
        response = client.post(
            "/login", data={"email": email, "password": "wrong", "csrf_token": token}
        )
        assert response.status_code == 401
        return time.perf_counter() - started

    # Interleaved, so that a change in the machine's load falls on both series alike.
    pairs = [(timed(orgs["users"]["admin_a"]), timed(f"nobody{i}@a.example")) for i in range(11)]
    known = statistics.median(k for k, _ in pairs)
    unknown = statistics.median(u for _, u in pairs)
    assert unknown > 0.5 * known, (unknown, known)
    assert known < 2 * unknown, (unknown, known)
