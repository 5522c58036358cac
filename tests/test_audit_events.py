"""Failed decryptions are audited without flooding: per key and minute, with a count."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import select

from portal.audit import aggregate
from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.db import get_session


def _events(app, company_id) -> list[dict]:
    """The organisation's decrypt_failed events' details."""
    with app.app_context():
        rows = get_session().scalars(
            select(AuditEvent).where(
                AuditEvent.company_id == company_id, AuditEvent.action == Action.DECRYPT_FAILED
            )
        )
        return [json.loads(e.details) for e in rows]


def test_a_burst_of_failures_is_one_event_then_one_count_per_key_and_minute(app, orgs):
    company = orgs["a"]["id"]
    minute = datetime(2026, 11, 28, 12, 30, 5, tzinfo=UTC)
    with app.app_context():
        db = get_session()
        first = aggregate.record(
            db, company, "aa" * 8, "messages", ["m1:integrity"], "system", now=minute
        )
        for i in range(500):
            aggregate.record(
                db,
                company,
                "aa" * 8,
                "messages",
                [f"m{i}:integrity"],
                "system",
                now=minute.replace(second=30),
            )
        other = aggregate.record(
            db, company, "bb" * 8, "attachments", ["a1:unknown_key"], "system", now=minute
        )
        db.commit()
    assert first and other
    immediate = _events(app, company)
    assert sorted(e["fingerprint"] for e in immediate) == [
        "aaaa:" * 3 + "aaaa",
        "bbbb:" * 3 + "bbbb",
    ]
    with app.app_context():
        db = get_session()
        assert aggregate.flush(db, company, "aa" * 8, "2026-11-28T12:30Z") == 500
        assert aggregate.flush(db, company, "bb" * 8, "2026-11-28T12:30Z") == 0
        assert aggregate.flush(db, company, "aa" * 8, "2026-11-28T12:30Z") == 0  # once only
        db.commit()
    events = _events(app, company)
    assert len(events) == 3
    follow_up = next(e for e in events if e.get("aggregated"))
    assert follow_up["count"] == 500 and follow_up["fingerprint"] == "aaaa:" * 3 + "aaaa"
    assert follow_up["kinds"] == {"messages": 500}
    assert len(follow_up["items"]["messages"]) <= aggregate.SAMPLES


def test_the_next_minute_starts_a_new_bucket(app, orgs):
    company = orgs["a"]["id"]
    with app.app_context():
        db = get_session()
        for minute in (1, 2):
            at = datetime(2026, 11, 28, 12, minute, 0, tzinfo=UTC)
            assert aggregate.record(
                db, company, "cc" * 8, "metadata", ["c:integrity"], "cli", now=at
            )
        db.commit()
    assert [e["minute"] for e in _events(app, company)] == [
        "2026-11-28T12:01Z",
        "2026-11-28T12:02Z",
    ]
