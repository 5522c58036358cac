"""Audit Log filter view: roles and tenants, every filter, and paging through the log."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.db import get_session
from tests.support.audit import DAY, HX, URLS, Clock, link, org_a_ids, seed, shown_ids

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
