"""Audit Log filter view, its htmx fragment and its exports: roles, tenants, filters, pages."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.events import emit
from portal.models import Organization, User

HX = {"HX-Request": "true"}
URLS = [
    "/settings/audit",
    "/settings/audit?type=BYOK&limit=5",
    "/settings/audit/export.csv",
    "/settings/audit/export.jsonl?type=auth",
]
DAY = datetime(2026, 3, 10, tzinfo=UTC)


class Clock:
    """A settable clock for ``emit`` so events land on chosen days."""

    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> datetime:
        """Return the current fake time."""
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Stamp emitted events with a time the test sets."""
    fake = Clock()
    monkeypatch.setattr("portal.events.utcnow", fake)
    return fake


def _user(email: str) -> User:
    """Load a user of the current app context by email."""
    return get_session().scalar(select(User).where(User.email == email))


def seed(app: Flask, org_key: str, specs: list[tuple], clock: Clock | None = None) -> list[int]:
    """Emit events (action, outcome, actor email or label, details, when) for an org; ids."""
    ids = []
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == f"org-{org_key}"))
        for action, outcome, actor, details, when in specs:
            if clock is not None and when is not None:
                clock.now = when
            who = _user(actor) if "@" in actor else actor
            ev = emit(db, action, outcome=outcome, actor=who, company_id=org.id, details=details)
            db.flush()
            ids.append(ev.id)
        db.commit()
    return ids


@pytest.fixture
def mixed(app: Flask, orgs: dict, clock: Clock) -> dict:
    """A varied log for org A over three days, and a look-alike log for org B."""
    a_specs = [
        ("BYOK.key_generated", "success", "admin@a.example", {"fingerprint": "AA:01"}, DAY),
        ("BYOK.key_test", "failure", "admin@a.example", {"reason": "length"}, DAY),
        ("BYOK.enabled", "success", "admin@a.example", {"fingerprint": "AA:01"}, DAY),
        ("auth.login", "success", "auditor@a.example", {}, DAY + timedelta(days=1)),
        ("auth.login_failed", "failure", "anonymous", {"email": "x@a.example"}, DAY + timedelta(1)),
        ("auth.access_denied", "denied", "member@a.example", {"endpoint": "audit.index"}, None),
        ("encryption_key.decrypt_failed", "failure", "system", {"count": 3}, DAY + timedelta(2)),
        ("BYOK.disabled", "success", "cli", {"fingerprint": "AA:01"}, DAY + timedelta(days=2)),
    ]
    b_specs = [
        ("BYOK.enabled", "success", "admin@b.example", {"marker": "org-b-only-marker"}, DAY),
        ("auth.login", "success", "admin@b.example", {"marker": "org-b-only-marker"}, DAY),
    ]
    a_ids = seed(app, "a", a_specs, clock)
    b_ids = seed(app, "b", b_specs, clock)
    actions = [spec[0] for spec in a_specs]
    return {
        "a": dict(zip(actions, a_ids, strict=True)),
        "b_ids": b_ids,
        "org_a": orgs["a"]["id"],
    }


def shown_ids(html: str) -> list[int]:
    """Event ids listed on a page or fragment, in page order."""
    return [int(i) for i in re.findall(r'data-event-id="(\d+)"', html)]


def link(html: str, rel: str) -> str | None:
    """The href of the Older (next) or Newer (prev) link, if shown."""
    match = re.search(rf'<a href="([^"]+)" rel="{rel}"', html)
    return match.group(1).replace("&amp;", "&") if match else None


def org_a_ids(app: Flask, **where) -> list[int]:
    """Ids of org A's events matching column values, newest first (straight from the DB)."""
    with app.app_context():
        db = get_session()
        org_id = db.scalar(select(Organization.id).where(Organization.slug == "org-a"))
        query = select(AuditEvent.id).where(AuditEvent.company_id == org_id)
        for column, value in where.items():
            query = query.where(getattr(AuditEvent, column) == value)
        return list(db.scalars(query.order_by(AuditEvent.id.desc())))


# Roles and tenants


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(
    ("who", "status"), [("admin_a", 200), ("auditor_a", 200), ("member_a", 403), ("support", 403)]
)
def test_only_admins_and_auditors_open_the_view_fragment_and_exports(
    login_as, who: str, status: int, url: str
) -> None:
    client = login_as(who)
    assert client.get(url).status_code == status
    assert client.get(url, headers=HX).status_code == status


@pytest.mark.parametrize("url", URLS)
def test_signed_out_visitor_is_sent_to_login(client: FlaskClient, orgs: dict, url: str) -> None:
    page = client.get(url)
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    fragment = client.get(url, headers=HX)
    assert fragment.status_code == 401 and "/login" in fragment.headers["HX-Redirect"]


def test_another_organisations_events_never_appear(
    app: Flask, login_as, mixed: dict, orgs: dict
) -> None:
    client = login_as("admin_a")
    b_first = mixed["b_ids"][0]
    urls = [
        "/settings/audit",
        "/settings/audit?actor=admin@b.example",
        "/settings/audit?type=BYOK.enabled",
        f"/settings/audit?before={b_first + 1}",
        f"/settings/audit?after={b_first - 1}&limit=200",
        f"/settings/audit?before={b_first}&from=2026-03-01",
        f"/settings/audit?after={b_first}&from=2026-03-01",
    ]
    for url in urls:
        for headers in ({}, HX):
            html = client.get(url, headers=headers).get_data(as_text=True)
            assert "org-b-only-marker" not in html, url
            assert "admin@b.example</span>" not in html, url
            assert not set(shown_ids(html)) & set(mixed["b_ids"]), url
    for fmt in ("csv", "jsonl"):
        body = client.get(f"/settings/audit/export.{fmt}").get_data(as_text=True)
        assert "org-b-only-marker" not in body
        assert str(orgs["b"]["id"]) not in body


def test_auditor_of_org_b_sees_only_org_b(app: Flask, login_as, mixed: dict) -> None:
    html = login_as("auditor_b").get("/settings/audit").get_data(as_text=True)
    ids = shown_ids(html)
    assert set(mixed["b_ids"]) <= set(ids)
    assert not set(ids) & set(mixed["a"].values())


# Filters


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("type=BYOK", {"category": "BYOK"}),
        ("type=encryption_key", {"category": "encryption_key"}),
        ("type=auth", {"category": "auth"}),
        ("type=BYOK.enabled", {"action": "BYOK.enabled"}),
        ("type=auth.login", {"action": "auth.login"}),
        ("actor=admin@a.example", {"actor_label": "admin@a.example"}),
        ("actor=cli", {"actor_label": "cli"}),
        ("outcome=failure", {"outcome": "failure"}),
        ("outcome=denied", {"outcome": "denied"}),
        ("type=BYOK&outcome=failure", {"category": "BYOK", "outcome": "failure"}),
        (
            "type=auth&actor=auditor@a.example",
            {"category": "auth", "actor_label": "auditor@a.example"},
        ),
    ],
)
def test_each_filter_returns_exactly_the_matching_events(
    app: Flask, login_as, mixed: dict, query: str, where: dict
) -> None:
    client = login_as("auditor_a")
    expected = org_a_ids(app, **where)
    assert expected, "the fixture must have matching events"
    html = client.get(f"/settings/audit?{query}&limit=200").get_data(as_text=True)
    assert shown_ids(html) == expected


def test_actor_filter_is_an_exact_match_not_a_substring(app: Flask, login_as, mixed: dict) -> None:
    html = login_as("admin_a").get("/settings/audit?actor=admin").get_data(as_text=True)
    assert shown_ids(html) == []
    assert "No events match these filters." in html
    assert "(exact match)" in html


@pytest.mark.parametrize(
    ("query", "days"),
    [
        ("from=2026-03-10&to=2026-03-10", [0]),
        ("from=2026-03-11", [1, 2, 5]),
        ("to=2026-03-11", [0, 1]),
        ("from=2026-03-11&to=2026-03-12", [1, 2]),
        ("from=2026-03-13&to=2026-03-14", []),
        ("from=2026-03-15", [5]),
        ("from=0001-01-01&to=9999-12-31", [0, 1, 2, 5]),
    ],
)
def test_date_range_selects_whole_utc_days_inclusive(
    app: Flask, login_as, mixed: dict, clock: Clock, query: str, days: list[int]
) -> None:
    clock.now = DAY + timedelta(days=5)  # time moves on: the sign-in is newer than the log
    client = login_as("admin_a")
    with app.app_context():
        rows = get_session().execute(
            select(AuditEvent.id, AuditEvent.occurred_at)
            .where(AuditEvent.company_id == mixed["org_a"])
            .order_by(AuditEvent.id.desc())
        )
        expected = [i for i, at in rows if (at.date() - DAY.date()).days in days]
    html = client.get(f"/settings/audit?{query}").get_data(as_text=True)
    assert shown_ids(html) == expected


def test_events_are_listed_newest_first(app: Flask, login_as, mixed: dict) -> None:
    html = login_as("admin_a").get("/settings/audit").get_data(as_text=True)
    ids = shown_ids(html)
    assert ids == sorted(ids, reverse=True) and len(ids) >= len(mixed["a"])


def test_filter_that_matches_nothing_says_so(app: Flask, login_as, mixed: dict) -> None:
    client = login_as("admin_a")
    for headers in ({}, HX):
        response = client.get("/settings/audit?type=BYOK.rotation_failed", headers=headers)
        assert response.status_code == 200
        assert "No events match these filters." in response.get_data(as_text=True)


def test_unknown_but_well_formed_action_filters_and_stays_selected(
    app: Flask, login_as, mixed: dict
) -> None:
    html = login_as("admin_a").get("/settings/audit?type=BYOK.future_thing").get_data(as_text=True)
    assert '<option value="BYOK.future_thing" selected>' in html
    assert "No events match these filters." in html


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2026-02-30", "From must be a date written YYYY-MM-DD"),
        ("from=yesterday", "From must be a date written YYYY-MM-DD"),
        ("to=10/03/2026", "To must be a date written YYYY-MM-DD"),
        ("from=2026-03-12&to=2026-03-10", "To is before From"),
        ("outcome=maybe", "Outcome must be one of: success, failure, denied."),
        ("type=BYOK;DROP", "Type must be a category such as BYOK"),
        ("type=" + "x" * 101, "Type must be a category such as BYOK"),
        ("actor=" + "a" * 321, "Actor is at most 320 characters."),
        ("actor=cli%00", "Actor contains control characters"),
        ("limit=%C2%B2", "Events per page must be a whole number from 1 to 200."),
        ("before=%D9%A3", "The page position is not valid"),
        ("from=%D9%A2%D9%A0%D9%A2%D9%A6-03-10", "From must be a date written YYYY-MM-DD"),
        ("before=abc", "The page position is not valid"),
        ("after=-5", "The page position is not valid"),
        ("before=0", "The page position is not valid"),
        ("before=99999999999999999999999", "The page position is not valid"),
        ("before=5&after=3", "not both"),
        ("limit=0", "Events per page must be a whole number from 1 to 200."),
        ("limit=1000", "Events per page must be a whole number from 1 to 200."),
        ("limit=abc", "Events per page must be a whole number from 1 to 200."),
        ("limit=2.5", "Events per page must be a whole number from 1 to 200."),
    ],
)
def test_invalid_filter_answers_400_with_a_clear_message(
    login_as, mixed: dict, query: str, message: str
) -> None:
    client = login_as("admin_a")
    page = client.get(f"/settings/audit?{query}")
    assert page.status_code == 400
    html = page.get_data(as_text=True)
    assert message in html and 'role="alert"' in html
    assert '<form class="card audit-filters"' in html  # the whole page, to fix the filter in
    fragment = client.get(f"/settings/audit?{query}", headers=HX)
    assert fragment.status_code == 400
    assert message in fragment.get_data(as_text=True)


def test_any_query_string_answers_200_or_400_never_500(login_as, orgs: dict) -> None:
    client = login_as("auditor_a")
    names = ["type", "actor", "outcome", "from", "to", "before", "after", "limit"]

    @settings(max_examples=60, deadline=None)
    @given(st.dictionaries(st.sampled_from(names), st.text(max_size=30)))
    def check(args: dict) -> None:
        for path in ("/settings/audit", "/settings/audit/export.jsonl"):
            response = client.get(path, query_string=args, headers=HX)
            assert response.status_code in (200, 400), (args, response.status_code)
            response.close()

    check()


def test_invalid_field_is_marked_on_the_form(login_as, orgs: dict) -> None:
    html = login_as("admin_a").get("/settings/audit?from=2026-13-01").get_data(as_text=True)
    assert re.search(r'id="audit-from"[^>]*aria-invalid="true"', html, re.S)


# Pages


def walk(client: FlaskClient, url: str, rel: str) -> tuple[list[list[int]], str]:
    """Follow Older (next) or Newer (prev) links from a page; the ids of each page and the
    URL of the last page reached."""
    pages = []
    while True:
        html = client.get(url, headers=HX).get_data(as_text=True)
        pages.append(shown_ids(html))
        following = link(html, rel)
        if following is None:
            return pages, url
        url = following


@pytest.mark.parametrize(
    ("filters", "where"),
    [("", {}), ("type=BYOK&", {"category": "BYOK"}), ("from=2026-03-01&to=2026-03-31&", {})],
)
def test_older_and_newer_pages_cover_every_event_once_in_order(
    app: Flask, login_as, orgs: dict, clock: Clock, filters: str, where: dict
) -> None:
    specs = [
        ("BYOK.key_test", "success", "cli", {"n": n}, DAY + timedelta(minutes=n // 2))
        for n in range(120)
    ]
    seed(app, "a", specs, clock)  # pairs share a time: ties are broken by id
    client = login_as("auditor_a")
    expected = org_a_ids(app, **where)
    assert len(expected) >= 120
    older, last_url = walk(client, f"/settings/audit?{filters}limit=50", "next")
    assert [len(p) for p in older] == [50, 50, len(expected) - 100]
    assert [i for page in older for i in page] == expected
    assert "before=" in last_url and filters[:-1] in last_url  # the links keep the filters
    newer, _ = walk(client, last_url, "prev")
    assert [i for page in reversed(newer) for i in page] == expected


def test_first_page_has_no_newer_link_and_last_page_no_older_link(
    app: Flask, login_as, orgs: dict
) -> None:
    seed(app, "a", [("BYOK.key_test", "success", "cli", {}, None)] * 7)
    client = login_as("admin_a")
    first = client.get("/settings/audit?type=BYOK&limit=5").get_data(as_text=True)
    assert link(first, "prev") is None and link(first, "next")
    last = client.get(link(first, "next")).get_data(as_text=True)
    assert len(shown_ids(last)) == 2
    assert link(last, "next") is None and link(last, "prev")


def test_a_page_past_the_end_offers_the_newest_events(app: Flask, login_as, mixed: dict) -> None:
    html = login_as("admin_a").get("/settings/audit?type=BYOK&before=1").get_data(as_text=True)
    assert "No events on this page." in html and "Show the newest events" in html


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


def test_no_key_material_in_the_view_or_exports(app: Flask, login_as, orgs: dict) -> None:
    from portal import crypto
    from portal.keys import operations as ops

    key = crypto.generate_key()
    text = base64.b64encode(key).decode()
    with app.app_context():
        db = get_session()
        org = db.get(Organization, orgs["a"]["id"])
        fp = ops.test_key(db, org, "cli", text)
        ops.enable(db, org, "cli", text, fp)
        db.commit()
    client = login_as("admin_a")
    forms = {
        text,
        base64.urlsafe_b64encode(key).decode(),
        text.rstrip("="),
        key.hex(),
        key.hex().upper(),
    }
    bodies = [
        client.get("/settings/audit").get_data(as_text=True),
        client.get("/settings/audit?type=BYOK", headers=HX).get_data(as_text=True),
        export(client, "csv")[1],
        export(client, "jsonl")[1],
    ]
    assert "BYOK.enabled" in bodies[1] and "BYOK.enabled" in bodies[3]
    for body in bodies:
        for form in forms:
            assert form not in body
