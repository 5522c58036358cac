"""``key_operation``: the one way a key operation's transaction ends (success, refusal, error)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from portal import crypto
from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.events import emit
from portal.keyformat import format_key
from portal.keys import operations as ops
from portal.keys.errors import KeyOperationError
from portal.keys.models import OrgKey
from portal.keys.transaction import key_operation
from portal.models import Organization


def stored_events(app, company_id: uuid.UUID, action: str) -> list[AuditEvent]:
    """Read an action's events from a fresh session: only committed work is there."""
    with app.app_context():
        session = app.extensions["db_sessionmaker"]()
        try:
            query = select(AuditEvent).where(
                AuditEvent.company_id == company_id, AuditEvent.action == action
            )
            return list(session.scalars(query))
        finally:
            session.close()


def org_name(app, company_id: uuid.UUID) -> str:
    """Read an organisation's name from a fresh session."""
    with app.app_context():
        session = app.extensions["db_sessionmaker"]()
        try:
            return session.get(Organization, company_id).name
        finally:
            session.close()


def test_success_commits_the_work(app, orgs):
    company = orgs["a"]["id"]
    with app.app_context():
        db = get_session()
        with key_operation(db) as session:
            session.get(Organization, company).name = "Renamed on success"
            emit(session, Action.KEY_TEST, actor="cli", company_id=company)
    assert org_name(app, company) == "Renamed on success"
    assert len(stored_events(app, company, Action.KEY_TEST)) == 1


def test_refusal_keeps_its_audit_event_and_re_raises(app, orgs):
    company = orgs["a"]["id"]
    with app.app_context():
        db = get_session()
        with pytest.raises(KeyOperationError, match="refused here"), key_operation(db):
            emit(db, Action.KEY_TEST, outcome="failure", actor="cli", company_id=company)
            raise KeyOperationError("refused here", code="refused")
        assert not db.new  # nothing left pending in the session
    [event] = stored_events(app, company, Action.KEY_TEST)
    assert event.outcome == "failure"


def test_refused_key_operation_stores_its_refusal_but_not_the_key(app, orgs):
    company = orgs["a"]["id"]
    key = crypto.generate_key()
    text = format_key(key)
    with app.app_context():
        db = get_session()
        org = db.get(Organization, company)
        with pytest.raises(KeyOperationError), key_operation(db):
            ops.enable(db, org, "cli", text, "not the tested fingerprint")
    [event] = stored_events(app, company, Action.BYOK_ENABLED)
    assert (event.outcome, json.loads(event.details)["reason"]) == ("failure", "untested")
    with app.app_context():
        session = app.extensions["db_sessionmaker"]()
        try:
            fingerprints = [k.fingerprint for k in session.scalars(select(OrgKey))]
        finally:
            session.close()
    assert crypto.fingerprint(crypto.key_id(key)) not in fingerprints


def test_any_other_error_rolls_everything_back(app, orgs):
    company = orgs["a"]["id"]
    before = org_name(app, company)
    with app.app_context():
        db = get_session()
        with pytest.raises(RuntimeError), key_operation(db):
            db.get(Organization, company).name = "Never stored"
            emit(db, Action.KEY_TEST, actor="cli", company_id=company)
            db.flush()
            raise RuntimeError("a bug, not a refusal")
    assert org_name(app, company) == before
    assert stored_events(app, company, Action.KEY_TEST) == []
