"""A minute's follow-up failed-decryption event keeps who read, and counts per kind."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from sqlalchemy import select

from portal.audit import aggregate
from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.chat.models import ApiToken
from portal.chat.service import create_token
from portal.db import get_session
from portal.models import User

KEY = "ab" * 8
FINGERPRINT = "abab:abab:abab:abab"
MINUTE = datetime(2026, 11, 28, 12, 30, 5, tzinfo=UTC)
RAW_KEY_ID = re.compile(r"(?<![0-9a-f:])[0-9a-f]{16}(?![0-9a-f:])")


def _events(app, company_id) -> list[AuditEvent]:
    """The organisation's decrypt_failed events, oldest first."""
    with app.app_context():
        db = get_session()
        rows = list(
            db.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.company_id == company_id, AuditEvent.action == Action.DECRYPT_FAILED
                )
                .order_by(AuditEvent.id)
            )
        )
        db.expunge_all()
        return rows


def test_the_follow_up_keeps_each_reader_and_counts_every_kind(app, orgs):
    company = orgs["a"]["id"]
    with app.app_context():
        db = get_session()
        secret = create_token(db, company, "reporting")
        token = db.scalar(select(ApiToken).where(ApiToken.company_id == company))
        user = db.scalar(select(User).where(User.email == orgs["users"]["admin_a"]))
        later = MINUTE.replace(second=40)
        assert aggregate.record(db, company, KEY, "messages", ["m0:integrity"], token, now=MINUTE)
        for i in range(3):
            items = [f"m{i}a:integrity", f"m{i}b:integrity"]
            assert not aggregate.record(db, company, KEY, "messages", items, token, now=later)
        attachments = ["a1:integrity", "a2:unknown_key"]
        assert not aggregate.record(db, company, KEY, "attachments", attachments, token, now=later)
        by_user = [f"u{i}:integrity" for i in range(4)]
        assert not aggregate.record(db, company, KEY, "messages", by_user, user, now=later)
        token_id, user_id = str(token.id), str(user.id)
        db.commit()
    with app.app_context():
        db = get_session()
        assert aggregate.flush(db, company, KEY, "2026-11-28T12:30Z") == 12
        db.commit()

    first, *follow_ups = _events(app, company)
    assert (first.actor_type, first.actor_id) == ("api_token", token_id)
    first_details = json.loads(first.details)
    assert first_details["fingerprint"] == FINGERPRINT
    assert first_details["kinds"] == {"messages": 1}
    by_actor = {e.actor_id: e for e in follow_ups}
    assert set(by_actor) == {token_id, user_id}
    from_token = by_actor[token_id]
    assert (from_token.actor_type, from_token.actor_label) == ("api_token", "token:reporting")
    details = json.loads(from_token.details)
    assert details["aggregated"] is True
    assert details["fingerprint"] == FINGERPRINT
    assert details["kinds"] == {"messages": 6, "attachments": 2}
    assert details["count"] == 8
    assert set(details["items"]) == {"messages", "attachments"}
    assert details["items"]["attachments"] == attachments
    assert all(len(v) <= aggregate.SAMPLES for v in details["items"].values())
    from_user = by_actor[user_id]
    assert (from_user.actor_type, from_user.actor_label) == ("user", orgs["users"]["admin_a"])
    assert json.loads(from_user.details)["kinds"] == {"messages": 4}
    for event in (first, *follow_ups):
        assert secret not in event.details and secret not in event.actor_label
        assert not RAW_KEY_ID.search(event.details), event.details
        assert event.outcome == "failure"


def test_rotation_failures_name_every_old_key_by_fingerprint(app, orgs):
    company = orgs["a"]["id"]
    with app.app_context():
        db = get_session()
        keys = f"{'01' * 8},{'02' * 8}"
        assert aggregate.record(db, company, keys, "messages", ["m:integrity"], "system")
        assert aggregate.record(db, company, "unknown", "metadata", ["c:malformed"], "system")
        db.commit()
    details = [json.loads(e.details) for e in _events(app, company)]
    assert [d["fingerprint"] for d in details] == [
        "0101:0101:0101:0101, 0202:0202:0202:0202",
        "unknown",
    ]
    assert all(not RAW_KEY_ID.search(json.dumps(d)) for d in details)


def test_flush_takes_the_fingerprint_the_event_shows(app, orgs):
    company = orgs["a"]["id"]
    with app.app_context():
        db = get_session()
        aggregate.record(db, company, KEY, "messages", ["m1:integrity"], "cli", now=MINUTE)
        aggregate.record(db, company, KEY, "messages", ["m2:integrity"], "cli", now=MINUTE)
        db.commit()
        assert aggregate.flush(db, company, FINGERPRINT, "2026-11-28T12:30Z") == 1
        db.commit()
    assert [e.actor_label for e in _events(app, company)] == ["cli", "cli"]
