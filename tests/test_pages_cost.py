"""The Compliance page, a run's progress fragment and the runs list cost the same whatever the
data and the history: the same statements at 10 items as at 1,000, and none reads an item table.
"""

from __future__ import annotations

import re
import uuid

from flask import Flask
from flask.testing import FlaskClient

from portal import crypto
from portal.chat.kinds import all_kinds
from portal.db import get_session
from portal.models import Organization
from portal.rotation import controls
from portal.rotation.models import RotationRun
from portal.rotation.start import start_rotation
from tests.support.queries import statements_matching
from tests.support.rotation import b64, enable_byok, seed
from tests.support.web import login

# Statements one view may run, at any data size: the signed-in user, the organisation, its
# keys, the per-key counters, the unfinished run; a little room, not a scan's worth.
COMPLIANCE_MAX_STATEMENTS = 10
# The user, the run with its per-kind totals, the sums of its ranges.
PROGRESS_MAX_STATEMENTS = 3
HX = {"HX-Request": "true"}


def statements(app: Flask):
    """Collect the SQL of every statement the app's engine runs meanwhile."""
    return statements_matching(app, re.compile(""))


def reading_items(sql: list[str]) -> list[str]:
    """The statements that read a registered kind's table (a count or scan of the data)."""
    tables = "|".join(re.escape(kind.model.__tablename__) for kind in all_kinds())
    pattern = re.compile(rf"\b(FROM|JOIN)\s+\"?({tables})\b", re.IGNORECASE)
    return [s for s in sql if pattern.search(s)]


def cost(app: Flask, client: FlaskClient, path: str, **headers: str) -> list[str]:
    """The statements one request of the page runs (after a first, warming request)."""
    assert client.get(path, headers=headers).status_code in (200, 286)
    with statements(app) as sql:
        response = client.get(path, headers=headers)
    assert response.status_code in (200, 286), response.get_data(as_text=True)[:500]
    return sql


def signed_in(app: Flask, email: str) -> FlaskClient:
    """A browser of its own, signed in through the login form."""
    client = app.test_client()
    assert login(client, email).status_code == 302
    return client


def with_items(app: Flask, org_id: uuid.UUID, messages: int) -> bytes:
    """BYOK on for the organisation and ``messages`` messages stored; return its key."""
    key = enable_byok(app, org_id)
    seed(app, org_id, conversations=1, messages=messages, attachments=1)
    return key


def start_run(app: Flask, org_id: uuid.UUID, old: bytes) -> tuple[uuid.UUID, bytes]:
    """Start a rotation and leave it running (nothing is enqueued, no worker takes it)."""
    new = crypto.generate_key()
    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_id), "cli", b64(old), b64(new))
        db.commit()
        return run.id, new


def test_compliance_page_runs_the_same_statements_at_10_and_1000_items(app, orgs):
    with_items(app, orgs["a"]["id"], 10)
    with_items(app, orgs["b"]["id"], 1000)
    small = cost(app, signed_in(app, orgs["users"]["admin_a"]), "/settings/compliance")
    large = cost(app, signed_in(app, orgs["users"]["admin_b"]), "/settings/compliance")
    assert len(small) == len(large) <= COMPLIANCE_MAX_STATEMENTS, large
    assert reading_items(large) == []


def test_compliance_page_during_a_run_reads_no_item_table(app, orgs):
    org_b = orgs["b"]["id"]
    start_run(app, org_b, with_items(app, org_b, 1000))
    sql = cost(app, signed_in(app, orgs["users"]["admin_b"]), "/settings/compliance")
    assert len(sql) <= COMPLIANCE_MAX_STATEMENTS, sql
    assert reading_items(sql) == []


def test_progress_fragment_runs_the_same_few_statements_at_10_and_1000_items(app, orgs):
    runs = {}
    for org, messages in (("a", 10), ("b", 1000)):
        org_id = orgs[org]["id"]
        runs[org], _ = start_run(app, org_id, with_items(app, org_id, messages))
    small = cost(
        app, signed_in(app, orgs["users"]["admin_a"]), f"/rotations/{runs['a']}/progress", **HX
    )
    large = cost(
        app, signed_in(app, orgs["users"]["admin_b"]), f"/rotations/{runs['b']}/progress", **HX
    )
    assert len(small) == len(large) <= PROGRESS_MAX_STATEMENTS, large
    assert reading_items(large) == []


def test_runs_list_does_not_query_once_per_run(app, orgs):
    support = signed_in(app, orgs["users"]["support"])
    org_a = orgs["a"]["id"]
    key = with_items(app, org_a, 10)
    counts = []
    for _ in range(3):
        run_id, key = start_run(app, org_a, key)
        with app.app_context():
            db = get_session()
            controls.control(db, db.get(RotationRun, run_id), "cancel", "cli")
            db.commit()
        counts.append(len(cost(app, support, "/rotations")))
    assert counts[0] == counts[1] == counts[2], counts
