"""Audit Log view under htmx (fragments, history, caching) and its CSV and JSON Lines exports."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.events import emit
from tests.support.audit import DAY, HX, Clock, org_a_ids, seed, shown_ids

# htmx and caching


def test_htmx_gets_the_results_fragment_and_a_full_get_the_same_state(
    app: Flask, login_as, mixed: dict
) -> None:
    client = login_as("admin_a")
    url = "/settings/audit?type=BYOK&actor=&outcome=&from=&to="
    fragment = client.get(url, headers=HX)
    assert fragment.status_code == 200
    body = fragment.get_data(as_text=True)
    assert "<html" not in body and "<form" not in body
    assert fragment.headers["HX-Push-Url"] == "/settings/audit?type=BYOK"
    assert "HX-Request" in fragment.headers["Vary"]
    assert fragment.headers["Cache-Control"] == "no-store"
    page = client.get("/settings/audit?type=BYOK")
    html = page.get_data(as_text=True)
    assert "<html" in html and '<option value="BYOK" selected>' in html
    assert shown_ids(html) == shown_ids(body)
    assert page.headers["Cache-Control"] == "no-store" and "HX-Request" in page.headers["Vary"]


def test_history_restore_by_htmx_gets_the_whole_page(app: Flask, login_as, mixed: dict) -> None:
    client = login_as("admin_a")
    headers = {**HX, "HX-History-Restore-Request": "true"}
    html = client.get("/settings/audit?outcome=failure", headers=headers).get_data(as_text=True)
    assert "<html" in html and '<option value="failure" selected>' in html


def test_an_unchanged_view_is_not_pushed_into_history_twice(login_as, mixed: dict) -> None:
    client = login_as("admin_a")
    current = {"HX-Current-URL": "http://localhost/settings/audit?type=BYOK"}
    same = client.get("/settings/audit?type=BYOK&actor=", headers={**HX, **current})
    assert same.headers["HX-Push-Url"] == "false"
    other = client.get("/settings/audit?type=auth", headers={**HX, **current})
    assert other.headers["HX-Push-Url"] == "/settings/audit?type=auth"


def test_an_invalid_view_in_history_is_restored_with_its_message(login_as, orgs: dict) -> None:
    headers = {**HX, "HX-History-Restore-Request": "true"}
    response = login_as("admin_a").get("/settings/audit?limit=abc", headers=headers)
    # htmx restores history only from a 2xx; the page itself carries the message.
    assert response.status_code == 200
    assert "Events per page must be a whole number" in response.get_data(as_text=True)


def test_event_details_expand_in_place_with_chain_fields(app: Flask, login_as, mixed: dict) -> None:
    html = login_as("admin_a").get("/settings/audit?type=BYOK.key_test").get_data(as_text=True)
    with app.app_context():
        ev = get_session().get(AuditEvent, mixed["a"]["BYOK.key_test"])
    block = html[html.index(f'data-event-id="{ev.id}"') :]
    block = block[: block.index("</details>")]
    assert "<summary>" in block
    assert ev.hash in block and ev.prev_hash in block
    assert "&#34;reason&#34;: &#34;length&#34;" in block  # pretty JSON of the details


# Exports


def export(client: FlaskClient, fmt: str, query: str = "") -> tuple[list[dict], str]:
    """Download an export and parse it into rows."""
    response = client.get(f"/settings/audit/export.{fmt}?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert "attachment;" in response.headers["Content-Disposition"]
    body = response.get_data(as_text=True)
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(body))), body
    return [json.loads(line) for line in body.splitlines()], body


def db_rows(app: Flask, ids: list[int]) -> list[dict]:
    """The stored events with these ids, newest first, as export-style dicts."""
    with app.app_context():
        events = get_session().scalars(
            select(AuditEvent).where(AuditEvent.id.in_(ids)).order_by(AuditEvent.id.desc())
        )
        return [
            {
                "id": e.id,
                "seq": e.seq,
                "action": e.action,
                "actor_label": e.actor_label,
                "details": e.details,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
                "chain_id": str(e.chain_id),
            }
            for e in events
        ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("type=BYOK", {"category": "BYOK"}),
        ("type=auth.login_failed", {"action": "auth.login_failed"}),
        (
            "actor=admin@a.example&outcome=success",
            {"actor_label": "admin@a.example", "outcome": "success"},
        ),
        ("outcome=failure&limit=1&before=999999", {"outcome": "failure"}),
    ],
)
def test_export_rows_equal_the_filtered_set_with_chain_hashes(
    app: Flask, login_as, mixed: dict, fmt: str, query: str, where: dict
) -> None:
    client = login_as("auditor_a")
    expected = org_a_ids(app, **where)
    rows, _ = export(client, fmt, query)
    assert [int(r["id"]) for r in rows] == expected  # newest first, as the page lists them
    for row, stored in zip(rows, db_rows(app, expected), strict=True):
        for name, value in stored.items():
            assert str(row[name]) == str(value), name


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_is_recorded_as_an_audit_event_before_streaming(
    app: Flask, login_as, mixed: dict, fmt: str
) -> None:
    client = login_as("auditor_a")
    response = client.get(f"/settings/audit/export.{fmt}?type=BYOK&from=2026-03-10", buffered=False)
    assert response.status_code == 200
    # Not a byte of the body has been read yet: the event is already committed.
    with app.app_context():
        exported = (
            get_session()
            .scalars(select(AuditEvent).where(AuditEvent.action == "audit.exported"))
            .all()
        )
    assert len(exported) == 1
    assert exported[0].actor_label == "auditor@a.example"
    assert json.loads(exported[0].details) == {
        "format": fmt,
        "filters": {"type": "BYOK", "from": "2026-03-10"},
    }
    assert exported[0].company_id is not None
    response.get_data()
    response.close()


@pytest.mark.parametrize("query", ["", "type=BYOK", "from=2026-03-10&to=2026-03-10"])
def test_export_reads_keyset_chunks_without_losing_or_repeating_rows(
    app: Flask, login_as, orgs: dict, clock: Clock, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    specs = [
        ("BYOK.key_test", "success", "cli", {"n": n}, DAY + timedelta(seconds=n // 3))
        for n in range(23)
    ]
    seed(app, "a", specs, clock)  # triples share a time: chunks split ties by id
    monkeypatch.setattr("portal.audit.export.CHUNK", 4)
    client = login_as("auditor_a")
    response = client.get(f"/settings/audit/export.jsonl?{query}", buffered=False)
    assert response.is_streamed
    rows = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    where = {"category": "BYOK"} if "BYOK" in query else {}
    assert [r["id"] for r in rows] == org_a_ids(app, **where)  # its own record too


def test_unfiltered_export_includes_its_own_record_and_verifies_offline(
    app: Flask, login_as, mixed: dict
) -> None:
    """The recipe of docs/format.md ("Audit chain"), with nothing of the portal's code."""
    rows, _ = export(login_as("admin_a"), "jsonl")
    assert rows[0]["action"] == "audit.exported"  # newest first: the export's own record
    prev = "0" * 64
    for row in reversed(rows):
        hashed = {k: row[k] for k in row if k not in ("id", "category", "hash")}
        assert len(hashed) == 13
        encoded = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(encoded.encode()).hexdigest() == row["hash"]
        assert row["prev_hash"] == prev
        prev = row["hash"]


def test_export_with_invalid_filter_answers_400(login_as, mixed: dict) -> None:
    client = login_as("admin_a")
    response = client.get("/settings/audit/export.csv?outcome=nope")
    assert response.status_code == 400
    assert "Outcome must be one of" in response.get_data(as_text=True)
    assert client.get("/settings/audit/export.xml").status_code == 404


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(
    app: Flask, login_as, orgs: dict
) -> None:
    with app.test_request_context(headers={"User-Agent": '=HYPERLINK("http://x")'}):
        db = get_session()
        emit(db, "auth.login_failed", outcome="failure", company_id=orgs["a"]["id"])
        db.commit()
    client = login_as("admin_a")
    rows, _ = export(client, "csv", "type=auth.login_failed")
    assert rows[0]["user_agent"] == '\'=HYPERLINK("http://x")'
    exact, _ = export(client, "jsonl", "type=auth.login_failed")
    assert exact[0]["user_agent"] == '=HYPERLINK("http://x")'


def test_no_key_material_in_the_view_or_exports(login_as, orgs: dict, enable_byok, leaks) -> None:
    key = enable_byok(orgs["a"]["id"])
    client = login_as("admin_a")
    bodies = [
        client.get("/settings/audit").get_data(as_text=True),
        client.get("/settings/audit?type=BYOK", headers=HX).get_data(as_text=True),
        export(client, "csv")[1],
        export(client, "jsonl")[1],
    ]
    assert "BYOK.enabled" in bodies[1] and "BYOK.enabled" in bodies[3]
    assert leaks.text([key], *bodies) == []
    assert leaks.text([key], f"<p>{base64.b64encode(key).decode()}</p>")  # the scan finds one
