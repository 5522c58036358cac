"""An organisation's key in its own key service, through the data API, for every provider.

Each test runs against the real service (OpenBao Transit, SoftHSM2, moto's KMS): connect,
write and read, revocation biting within the cache time and access coming back by itself,
an unreachable service (503 with Retry-After, then recovery), re-wrap without touching a
data row, a wrong key reference refused at Test, and no data key in the clear anywhere.
"""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from flask import Flask
from sqlalchemy import select

from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.chat.models import Message
from portal.db import get_session
from portal.keys import external
from portal.keys import operations as ops
from portal.keys.custody import CustodyError
from portal.keys.errors import KeyOperationError
from portal.keys.models import OrgKey
from portal.keys.transaction import key_operation
from portal.keys.wrapped import unwrap_row
from portal.models import Organization
from tests.support.api import Api
from tests.support.keyservices import PROVIDERS, pointed_at
from tests.support.leaks import Secret

CACHE = 1


@pytest.fixture(autouse=True, params=PROVIDERS)
def service(request: pytest.FixtureRequest, app_config: dict):
    """The real key service of one provider, with the portal pointed at it."""
    running = pointed_at(
        request, app_config, request.param, KMS_CACHE_SECONDS=CACHE, KMS_BREAKER_SECONDS=1
    )
    return running


def _connect(app: Flask, org: dict, provider: str, ref: str) -> OrgKey:
    """Test and connect the key as an admin would; return the new external key row."""
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org["id"])
        with key_operation(db):
            info = external.test_connection(db, org, "cli", provider, ref)
            assert info.version
            row = external.connect(
                db, org, "cli", provider, ref, tested=external.tested_marker(provider, ref, None)
            )
        db.commit()
        return row


def _wait_for(check, seconds: float) -> float:
    """Poll check() every 50 ms until it is true; return how long that took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not true within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - start


def _message_state(api: Api, conv: str) -> object:
    """The body of the conversation's first message, as the data API reports it."""
    return api.read(conv)["messages"][0]["body"]


def test_connected_key_encrypts_and_revocation_bites_within_the_cache_time(
    app: Flask, orgs: dict, service
) -> None:
    ref = service.new_key()
    row = _connect(app, orgs["a"], service.provider, ref)
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "secret words")
    assert _message_state(api, conv) == "secret words"
    with app.app_context():
        stored = get_session().scalars(select(Message.key_id)).all()
    assert set(stored) == {row.key_id}

    service.revoke(ref)
    try:
        took = _wait_for(lambda: _message_state(api, conv) != "secret words", CACHE + 3)
        assert took <= CACHE + 1.5
        assert _message_state(api, conv) == {
            "status": "unavailable",
            "reason": "key_access_revoked",
        }
        refused = api.post_message(conv, "more")
        assert refused.status_code == 403
        assert refused.get_json()["error"] == "key_access_revoked"
    finally:
        service.restore(ref)
    _wait_for(lambda: _message_state(api, conv) == "secret words", 5)
    assert api.post_message(conv, "after").status_code == 201
    with app.app_context():
        actions = set(get_session().scalars(select(AuditEvent.action)))
    assert {Action.DECRYPT_FAILED.value, Action.KEY_SERVICE_DENIED.value} <= actions


def test_an_unreachable_service_answers_503_with_retry_after_then_recovers(
    app: Flask, orgs: dict, service
) -> None:
    ref = service.new_key()
    _connect(app, orgs["a"], service.provider, ref)
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "kept")
    service.stop()
    try:
        time.sleep(CACHE + 0.2)
        assert _message_state(api, conv) == {
            "status": "unavailable",
            "reason": "key_service_unreachable",
        }
        started = time.monotonic()
        refused = api.post_message(conv, "more")
        # The breaker is open: the write is refused without waiting out a timeout.
        assert time.monotonic() - started < 1.0
        assert refused.status_code == 503
        assert refused.get_json()["error"] == "key_service_unreachable"
        assert int(refused.headers["Retry-After"]) >= 1
        health = app.test_client().get("/healthz").get_json()
        assert health["key_services"][service.provider]["state"] == "unreachable"
    finally:
        service.start()
    _wait_for(lambda: _message_state(api, conv) == "kept", 10)
    assert api.post_message(conv, "after").status_code == 201
    with app.app_context():
        actions = set(get_session().scalars(select(AuditEvent.action)))
    assert Action.KEY_SERVICE_UNREACHABLE.value in actions


def test_a_wrong_key_reference_is_refused_at_test_and_nothing_is_stored(
    app: Flask, orgs: dict, service
) -> None:
    ref = service.new_key()
    wrong = ref + "-missing" if service.provider != "aws-kms" else ref[:-4] + "0000"
    with app.app_context():
        db = get_session()
        org = db.get(Organization, orgs["a"]["id"])
        with pytest.raises(KeyOperationError) as refused, key_operation(db):
            external.test_connection(db, org, "cli", service.provider, wrong)
        db.commit()
        assert refused.value.code == "key_access_revoked"
        assert refused.value.field == "key_ref"
        assert not db.scalars(select(OrgKey).where(OrgKey.origin == "external")).all()
        audited = db.scalars(
            select(AuditEvent).where(AuditEvent.action == Action.KEY_SERVICE_TEST.value)
        ).all()
        assert [e.outcome for e in audited] == ["failure"]


def test_rewrap_rewrites_only_the_wrapped_data_key(app: Flask, orgs: dict, service) -> None:
    ref = service.new_key()
    row = _connect(app, orgs["a"], service.provider, ref)
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    for n in range(5):
        api.message(conv, f"m{n}")
    other = service.new_key()
    with app.app_context():
        db = get_session()
        before_rows = {m.id: bytes(m.body_ct) for m in db.scalars(select(Message))}
        before_wrapped = bytes(db.get(OrgKey, row.id).sealed)
        org = db.get(Organization, orgs["a"]["id"])
        with key_operation(db):
            rewrapped = external.rewrap(db, org, "cli", other)
        db.commit()
        assert [r.key_id for r in rewrapped] == [row.key_id]
        stored = db.get(OrgKey, row.id)
        assert stored.key_ref == other and bytes(stored.sealed) != before_wrapped
        after_rows = {m.id: bytes(m.body_ct) for m in db.scalars(select(Message))}
    assert after_rows == before_rows
    # The old key can go: the data key is now wrapped by the new one only.
    service.revoke(ref)
    try:
        time.sleep(CACHE + 0.2)
        assert [m["body"] for m in api.read(conv)["messages"]] == [f"m{n}" for n in range(5)]
    finally:
        service.restore(ref)


def test_no_data_key_in_the_clear_in_the_database_redis_or_logs(
    app: Flask, orgs: dict, service, leaks, caplog, capfd
) -> None:
    ref = service.new_key()
    row = _connect(app, orgs["a"], service.provider, ref)
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "x")
    with app.app_context():
        data_key = unwrap_row(get_session().get(OrgKey, row.id))
    assert len(data_key) == 32
    assert not leaks.everywhere([Secret("data key", data_key)], caplog, capfd)


def test_another_organisations_wrapped_key_does_not_unwrap(app: Flask, orgs: dict, service) -> None:
    ref = service.new_key()
    row = _connect(app, orgs["a"], service.provider, ref)
    with app.app_context():
        moved = OrgKey(
            company_id=orgs["b"]["id"],
            key_id=row.key_id,
            state="active",
            origin="external",
            sealed=row.sealed,
            custody=row.custody,
            key_ref=row.key_ref,
            created_by="test",
        )
        moved.id = uuid.uuid4()
        with pytest.raises(CustodyError) as refused:
            unwrap_row(moved)
        assert refused.value.code == "key_unavailable"


def test_the_portals_kill_switch_and_restore_refuse_an_external_key(
    app: Flask, orgs: dict, service
) -> None:
    ref = service.new_key()
    row = _connect(app, orgs["a"], service.provider, ref)
    with app.app_context():
        db = get_session()
        org = db.get(Organization, orgs["a"]["id"])
        with pytest.raises(KeyOperationError) as refused, key_operation(db):
            ops.revoke(db, org, "cli", org.slug)
        assert refused.value.code == "external_key"
        kept = db.get(OrgKey, row.id)
        assert kept.state == "active" and kept.sealed == row.sealed
        # Even holding the data key itself (the test can unwrap it) restores nothing.
        data_key = unwrap_row(kept)
        with pytest.raises(KeyOperationError) as refused, key_operation(db):
            ops.restore(db, org, "cli", base64.b64encode(data_key).decode())
        assert refused.value.code == "external_key"


def test_a_connect_the_service_refuses_changes_nothing(app: Flask, orgs: dict, service) -> None:
    ref = service.new_key()
    service.revoke(ref)
    try:
        with app.app_context():
            db = get_session()
            org = db.get(Organization, orgs["a"]["id"])
            before = [(k.key_id, k.state) for k in db.scalars(select(OrgKey))]
            with pytest.raises(KeyOperationError), key_operation(db):
                external.connect(db, org, "cli", service.provider, ref)
            db.expire_all()
            assert [(k.key_id, k.state) for k in db.scalars(select(OrgKey))] == before
    finally:
        service.restore(ref)
