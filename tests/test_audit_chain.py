"""The audit trail is tamper-evident: every kind of tampering is found and named."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Uuid, bindparam, select, text

from portal.audit.chain import prune, verify_all, verify_chain
from portal.audit.models import AuditEvent, AuditHead
from portal.db import get_session, utcnow
from portal.events import canonical, chain_bytes, emit, event_hash


def _seed(app, company_id, n: int = 10) -> list[int]:
    """Append n events to the organisation's chain; return their ids in order."""
    with app.app_context():
        db = get_session()
        ids = []
        for i in range(n):
            ev = emit(
                db,
                "BYOK.key_test",
                actor="cli",
                company_id=company_id,
                details={"i": i, "fingerprint": f"00{i:02d}"},
            )
            db.flush()
            ids.append(ev.id)
        db.commit()
        return ids


def _bypass_triggers(db) -> None:
    """Switch the append-only triggers off for this transaction, as a database owner can."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SET LOCAL session_replication_role = replica"))
    else:  # DDL is transactional in SQLite: _restore_triggers puts them back before commit
        db.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
        db.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))


def _restore_triggers(db) -> None:
    """Put SQLite's triggers back (PostgreSQL's setting ends with the transaction)."""
    if db.get_bind().dialect.name != "postgresql":
        import importlib

        migration = importlib.import_module(
            "migrations.versions.0004_audit_append_only_and_checkpoints"
        )
        for statement in migration.SQLITE_APPEND_ONLY[1:]:
            db.execute(text(statement))


def _attack(app, sql: str, **params) -> None:
    """Change the audit table as someone with direct database access would."""
    with app.app_context():
        db = get_session()
        _bypass_triggers(db)
        query = text(sql)
        if "c" in params:
            query = query.bindparams(bindparam("c", type_=Uuid))
        db.execute(query, params)
        _restore_triggers(db)
        db.commit()


def _verify(app, company_id):
    """Verify one organisation's chain with the installation's signing key."""
    with app.app_context():
        return verify_chain(get_session(), company_id, app.extensions["audit_signing_key"])


def test_an_untouched_chain_verifies(app, orgs):
    _seed(app, orgs["a"]["id"], 25)
    result = _verify(app, orgs["a"]["id"])
    assert result.ok and result.checked == 25


def test_an_edited_field_is_detected_at_that_event(app, orgs):
    ids = _seed(app, orgs["a"]["id"])
    _attack(app, "UPDATE audit_events SET actor_label = 'someone-else' WHERE id = :i", i=ids[4])
    result = _verify(app, orgs["a"]["id"])
    assert not result.ok and result.event_id == ids[4] and "changed" in result.reason


def test_a_deleted_event_is_detected_at_the_next_one(app, orgs):
    ids = _seed(app, orgs["a"]["id"])
    _attack(app, "DELETE FROM audit_events WHERE id = :i", i=ids[3])
    result = _verify(app, orgs["a"]["id"])
    assert not result.ok and result.event_id == ids[4] and "missing" in result.reason


def test_two_swapped_events_are_detected(app, orgs):
    ids = _seed(app, orgs["a"]["id"])
    # Swap the positions of events 3 and 4 (their sequence numbers), via a free number.
    _attack(app, "UPDATE audit_events SET seq = -1 WHERE id = :i", i=ids[2])
    _attack(app, "UPDATE audit_events SET seq = 3 WHERE id = :i", i=ids[3])
    _attack(app, "UPDATE audit_events SET seq = 4 WHERE id = :i", i=ids[2])
    result = _verify(app, orgs["a"]["id"])
    assert not result.ok and result.seq == 3 and result.event_id == ids[3]


def test_a_truncated_tail_is_detected(app, orgs):
    ids = _seed(app, orgs["a"]["id"])
    _attack(app, "DELETE FROM audit_events WHERE id IN (:a, :b)", a=ids[-1], b=ids[-2])
    result = _verify(app, orgs["a"]["id"])
    assert not result.ok and result.event_id == ids[-3] and "cut" in result.reason


def test_a_fully_rehashed_chain_is_detected_by_the_head_signature(app, orgs):
    company = orgs["a"]["id"]
    ids = _seed(app, company)
    _attack(app, "UPDATE audit_events SET actor_label = 'forger' WHERE id = :i", i=ids[1])
    # The forger recomputes every hash from the edited event on, and the head hash too.
    with app.app_context():
        db = get_session()
        _bypass_triggers(db)
        prev = None
        for ev in db.scalars(
            select(AuditEvent).where(AuditEvent.chain_id == company).order_by(AuditEvent.seq)
        ):
            if prev is not None:
                ev.prev_hash = prev
            ev.hash = event_hash(ev)
            prev = ev.hash
        db.flush()
        head = db.get(AuditHead, company)
        head.hash = prev
        db.flush()
        _restore_triggers(db)
        db.commit()
    result = _verify(app, company)
    assert not result.ok and "signature" in result.reason and result.event_id == ids[-1]
    with app.app_context():  # without the master-key-derived key the forgery would pass
        assert verify_chain(get_session(), company, None).ok


def test_application_cannot_update_or_delete_events(app, orgs):
    ids = _seed(app, orgs["a"]["id"], 2)
    from sqlalchemy.exc import DBAPIError, IntegrityError

    with app.app_context():
        db = get_session()
        for sql in (
            "UPDATE audit_events SET outcome = 'success' WHERE id = :i",
            "DELETE FROM audit_events WHERE id = :i",
        ):
            with pytest.raises((DBAPIError, IntegrityError), match="append-only"):
                db.execute(text(sql), {"i": ids[0]})
            db.rollback()
    assert _verify(app, orgs["a"]["id"]).ok


def test_pruning_keeps_the_chain_verifiable_behind_a_signed_checkpoint(app, orgs):
    company = orgs["a"]["id"]
    ids = _seed(app, company, 12)
    _attack(
        app,
        "UPDATE audit_events SET occurred_at = :t WHERE id <= :i",
        t=utcnow() - timedelta(days=400),
        i=ids[7],
    )
    # Back-dating changes hashed fields: re-seal those events as if they had been written then.
    with app.app_context():
        db = get_session()
        _bypass_triggers(db)
        from portal.events import sign_head

        prev = None
        for ev in db.scalars(
            select(AuditEvent).where(AuditEvent.chain_id == company).order_by(AuditEvent.seq)
        ):
            if prev is not None:
                ev.prev_hash = prev
            ev.hash = event_hash(ev)
            prev = ev.hash
        head = db.get(AuditHead, company)
        head.hash = prev
        head.signature = sign_head(app.extensions["audit_signing_key"], company, head.seq, prev)
        db.flush()
        _restore_triggers(db)
        db.commit()
    assert _verify(app, company).ok
    with app.app_context():
        db = get_session()
        pruned = prune(db, utcnow() - timedelta(days=365), app.extensions["audit_signing_key"])
        db.commit()
        assert pruned[company] == 8
        assert (
            db.scalar(
                select(AuditEvent.seq)
                .where(AuditEvent.chain_id == company)
                .order_by(AuditEvent.seq)
                .limit(1)
            )
            == 9
        )
    result = _verify(app, company)
    assert result.ok and result.checked == 5  # 4 kept + the audit.pruned event
    _attack(app, "UPDATE audit_checkpoints SET hash = :h", h="0" * 64)
    assert not _verify(app, company).ok


def test_verify_command_exits_non_zero_naming_the_first_bad_event(app, app_config, orgs):
    ids = _seed(app, orgs["a"]["id"])
    _seed(app, orgs["b"]["id"], 3)
    env = {
        **os.environ,
        **{k: app_config[k] for k in ("BYOK_HOME", "DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY")},
    }

    def verify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "portal.cli", "audit", "verify", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = verify()
    assert good.returncode == 0, good.stderr
    assert "0 broken" in good.stdout
    _attack(app, "UPDATE audit_events SET details = '{}' WHERE id = :i", i=ids[6])
    bad = verify()
    assert bad.returncode == 1
    assert f"event id {ids[6]} (seq 7)" in bad.stderr
    only_b = verify("--org", "org-b")
    assert only_b.returncode == 0 and "1 chains" in only_b.stdout


def test_a_chain_of_100k_events_verifies(app, orgs):
    """Written with the real hashing, in bulk; verification walks all of it."""
    import hashlib
    import json

    from portal.events import GENESIS, canonical, sign_head

    company = orgs["a"]["id"]
    n = 100_000
    start = utcnow()
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        at = start + timedelta(microseconds=seq)
        fields = {
            "chain_id": str(company),
            "seq": seq,
            "company_id": str(company),
            "occurred_at": at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z",
            "actor_type": "system",
            "actor_id": None,
            "actor_label": "system",
            "action": "BYOK.key_test",
            "outcome": "success",
            "source_ip": None,
            "user_agent": None,
            "details": json.dumps({"n": seq}),
            "prev_hash": prev,
        }
        digest = hashlib.sha256(canonical(fields)).hexdigest()
        rows.append(
            {
                "chain_id": company,
                "seq": seq,
                "company_id": company,
                "occurred_at": at,
                "actor_type": "system",
                "actor_id": None,
                "actor_label": "system",
                "action": "BYOK.key_test",
                "category": "BYOK",
                "outcome": "success",
                "source_ip": None,
                "user_agent": None,
                "details": fields["details"],
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    with app.app_context():
        db = get_session()
        db.execute(AuditEvent.__table__.insert(), rows)
        key = app.extensions["audit_signing_key"]
        db.add(
            AuditHead(
                chain_id=company, seq=n, hash=prev, signature=sign_head(key, company, n, prev)
            )
        )
        db.commit()
        results = verify_all(db, key, company)
    assert results[0].ok and results[0].checked == n


_maybe_text = st.none() | st.text()


@settings(max_examples=300, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {
            "chain_id": st.uuids().map(str),
            "seq": st.integers(min_value=1, max_value=2**62),
            "company_id": st.none() | st.uuids().map(str),
            "occurred_at": st.datetimes().map(lambda t: t.isoformat(timespec="microseconds")),
            "actor_type": st.text(),
            "actor_id": _maybe_text,
            "actor_label": st.text(),
            "action": st.text(),
            "outcome": st.text(),
            "source_ip": _maybe_text,
            "user_agent": _maybe_text,
            "details": st.text(),
            "prev_hash": st.text(),
        }
    )
)
def test_the_fast_encoding_is_byte_for_byte_the_canonical_json(fields):
    """chain_bytes() is an optimisation of canonical(): they may never disagree."""
    assert chain_bytes(**fields) == canonical(fields)


def test_events_with_awkward_text_and_times_verify(app, orgs):
    """Quotes, escapes, control characters and non-ASCII survive the database round trip."""
    company = orgs["a"]["id"]
    awkward = 'é "quoted" \\ back\tslash \x01 \u2028 🙂 </script>'
    with app.test_request_context(
        "/", headers={"User-Agent": awkward}, environ_base={"REMOTE_ADDR": "2001:db8::1"}
    ):
        db = get_session()
        for _ in range(3):
            emit(db, "BYOK.key_test", actor=awkward, company_id=company, details={"k": awkward})
        db.commit()
    with app.app_context():
        db = get_session()
        stored = db.scalars(
            select(AuditEvent).where(
                AuditEvent.chain_id == company, AuditEvent.actor_label == awkward
            )
        ).all()
        assert len(stored) == 3 and {ev.user_agent for ev in stored} == {awkward}
    assert _verify(app, company).ok
