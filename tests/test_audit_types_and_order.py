"""The Audit Log's Type menu lists every action the code emits, names unknown types, and its
exports come in the page's order (newest first)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from flask import Flask
from sqlalchemy import select

from portal.audit.actions import Action, Category
from portal.db import get_session
from portal.events import emit
from portal.models import Organization

HX = {"HX-Request": "true"}


def menu_types(html: str) -> list[str]:
    """The values offered by the Type menu of the page."""
    select_html = re.search(r'<select id="audit-type".*?</select>', html, re.S)
    assert select_html, "no Type menu"
    return re.findall(r'<option value="([^"]*)"', select_html.group(0))


def test_the_type_menu_offers_every_action_and_category(login_as, orgs: dict) -> None:
    # tests/test_audit_actions.py holds every emit() to an Action member, so this is all of them.
    offered = menu_types(login_as("admin_a").get("/settings/audit").get_data(as_text=True))
    assert offered == ["", *Category, *Action]


@pytest.mark.parametrize("kind", ["BYOK.future_thing", "Nonsense", "auth.login_failed.extra"])
def test_an_unknown_type_is_named_as_unknown_not_silently_empty(
    login_as, orgs: dict, kind: str
) -> None:
    client = login_as("admin_a")
    for headers in ({}, HX):
        response = client.get(f"/settings/audit?type={kind}", headers=headers)
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        assert f"“{kind}” is not a type of event the portal records" in html, html
        assert "Choose a type from the Type menu" in html


def test_a_known_type_with_no_events_is_not_called_unknown(login_as, orgs: dict) -> None:
    html = login_as("admin_a").get("/settings/audit?type=BYOK.rotation_failed").get_data(True)
    assert "No events match these filters." in html
    assert "is not a type of event" not in html


def _seed(app: Flask, count: int) -> list[int]:
    """Emit ``count`` events for org A; their ids, oldest first."""
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == "org-a"))
        ids = []
        for n in range(count):
            event = emit(db, Action.KEY_TEST, actor="cli", company_id=org.id, details={"n": n})
            db.flush()
            ids.append(event.id)
        db.commit()
    return ids


@pytest.mark.parametrize("query", ["", "type=BYOK", "from=2000-01-01", "actor=cli"])
def test_exports_are_newest_first_like_the_page(
    app: Flask, login_as, orgs: dict, query: str
) -> None:
    _seed(app, 7)
    client = login_as("auditor_a")
    page = client.get(f"/settings/audit?{query}").get_data(as_text=True)
    shown = [int(i) for i in re.findall(r'data-event-id="(\d+)"', page)]
    assert "newest first" in page and "newest first, as listed here" in page
    jsonl = client.get(f"/settings/audit/export.jsonl?{query}").get_data(as_text=True)
    by_jsonl = [json.loads(line)["id"] for line in jsonl.splitlines()]
    text = client.get(f"/settings/audit/export.csv?{query}").get_data(as_text=True)
    by_csv = [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]
    for ids in (by_jsonl, by_csv):
        assert ids == sorted(ids, reverse=True)
        assert [i for i in ids if i in shown] == shown  # the exports add their own records
