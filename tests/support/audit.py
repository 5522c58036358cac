"""An audit log to look at: events emitted on chosen days for two organisations, read back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
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
        """Start on the first day of the seeded log."""
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
