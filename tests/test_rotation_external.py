"""Full re-encryption with keys in the customer's key service, against the real services.

Sealed to a key service (for every provider), from one key of the service to another and
back to sealed, the refusals (audited like a rotation's), and a range that finds the key
service unreachable: it waits with its checkpoint, nothing fails, and it goes on once the
service answers. Workers here are in-process RQ burst workers (tests/support/rotation.py);
tests/test_rotation_key_service_down.py kills the service under real worker processes.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from flask import Flask
from sqlalchemy import select, update

from portal import crypto
from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.chat import kinds
from portal.db import get_session
from portal.keys import external
from portal.keys.errors import KeyOperationError
from portal.keys.models import OrgKey
from portal.keys.transaction import key_operation
from portal.models import Organization
from portal.rotation import engine
from portal.rotation.common import KeyServiceWait
from portal.rotation.models import RotationEvent, RotationFailure, RotationRange, RotationRun
from portal.rotation.progress import progress
from portal.rotation.queue import enqueue_ranges
from portal.rotation.reencrypt import start_reencryption
from portal.rotation.watchdog import WATCHED_STATES
from portal.rotation.worker import finish_if_done, process_range
from tests.support import rotation as rot
from tests.support.api import Api
from tests.support.faults import private_queue
from tests.support.keyservices import PROVIDERS, pointed_at
from tests.support.web import login

VAULT = pytest.mark.parametrize("service", ["vault_service"], indirect=True)


@pytest.fixture(autouse=True, params=PROVIDERS)
def service(request: pytest.FixtureRequest, app_config: dict):
    """The real key service of one provider, with the portal pointed at it."""
    running = pointed_at(
        request, app_config, request.param, KMS_CACHE_SECONDS=1, KMS_BREAKER_SECONDS=1
    )
    private_queue(app_config)
    return running


def _reencrypt(
    app: Flask, org_id: uuid.UUID, provider: str, ref: str | None = None, **texts: str
) -> uuid.UUID:
    """Start a full re-encryption as the CLI would (in key_operation) and queue its ranges;
    to ``provider``'s key ``ref``, or to the pasted key in ``texts`` when ref is None."""
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        with key_operation(db):
            target = external.read_ref(org.id, provider, ref) if ref else None
            run = start_reencryption(db, org, "cli", target=target, **texts)
        run_id = run.id
    enqueue_ranges(app, run_id)
    return run_id


def _refused(app: Flask, org_id: uuid.UUID, provider: str, ref: str | None = None, **texts: str):
    """Try to start one, expecting a refusal; return it."""
    with pytest.raises(KeyOperationError) as refused:
        _reencrypt(app, org_id, provider, ref, **texts)
    return refused.value


def _connect(app: Flask, org_id: uuid.UUID, provider: str, ref: str) -> None:
    """Enable BYOK with a key of the service (Test, then Save & Enable)."""
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        with key_operation(db):
            external.test_connection(db, org, "cli", provider, ref)
            marker = external.tested_marker(provider, ref, None)
            external.connect(db, org, "cli", provider, ref, tested=marker)


def _breaker_closed(app: Flask, provider: str) -> None:
    """Wait out the circuit breaker a refused call opened (KMS_BREAKER_SECONDS)."""
    client = app.extensions["key_services"][provider]
    deadline = time.monotonic() + 5
    while client.health().circuit_open_for and time.monotonic() < deadline:
        time.sleep(0.05)


def _completed(app: Flask, run_id: uuid.UUID, items: int) -> RotationRun:
    """The run completed, verified, with every item moved and none failed."""
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert run.state == "completed", (run.state, run.error)
        figures = progress(db, run)
        assert (figures.done, figures.failed, figures.waiting_for) == (items, 0, None)
        return run


def _keys(app: Flask, org_id: uuid.UUID) -> list[OrgKey]:
    """The organisation's own key rows (not its platform key), oldest first."""
    with app.app_context():
        rows = get_session().scalars(
            select(OrgKey)
            .where(OrgKey.company_id == org_id, OrgKey.origin != "platform")
            .order_by(OrgKey.created_at)
        )
        return list(rows)


def _started_details(app: Flask, org_id: uuid.UUID) -> list[dict]:
    """Details of the organisation's ROTATION_STARTED events, oldest first."""
    with app.app_context():
        events = get_session().scalars(
            select(AuditEvent)
            .where(
                AuditEvent.company_id == org_id,
                AuditEvent.action == Action.ROTATION_STARTED.value,
            )
            .order_by(AuditEvent.id)
        )
        return [{"outcome": e.outcome, **json.loads(e.details)} for e in events]


@pytest.fixture
def provider(service) -> str:
    """The provider name under test."""
    return service.provider


def test_sealed_to_key_service_moves_every_item_and_retires_the_sealed_key(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    old = rot.enable_byok(app, org)
    rot.seed(app, org, conversations=3, messages=8, attachments=1)
    before = rot.plaintext_digest(app, org)
    ref = service.new_key()
    run_id = _reencrypt(app, org, provider, ref, current_text=rot.b64(old))
    rot.run_worker(app)
    _completed(app, run_id, len(before))
    sealed, new = _keys(app, org)
    assert sealed.key_id == crypto.key_id(old).hex()
    assert (sealed.state, sealed.sealed) == ("retired", None)
    assert (new.state, new.origin, new.custody) == ("active", "external", provider)
    assert new.key_ref == ref
    assert rot.key_ids(app, org) == {new.key_id}
    assert rot.plaintext_digest(app, org) == before
    api = Api.for_org(app, org)
    conv = api.conversation("after")
    api.message(conv, "written under the new key")
    assert api.bodies(conv) == ["written under the new key"]
    assert rot.key_ids(app, org) == {new.key_id}
    (started,) = _started_details(app, org)
    assert started["outcome"] == "success"
    assert started["mode"] == "full_reencryption"
    assert (started["from_custody"], started["to_custody"]) == ("sealed", provider)
    assert started["to_key_ref"] == ref and "from_key_ref" not in started
    assert started["new_fingerprint"] == new.fingerprint


def test_from_one_key_of_the_service_to_another_then_back_to_sealed(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    first_ref, second_ref = service.new_key(), service.new_key()
    _connect(app, org, provider, first_ref)
    rot.seed(app, org, conversations=2, messages=6, attachments=1)
    before = rot.plaintext_digest(app, org)
    # After a suspected compromise: a new data key under another key; no current key to paste.
    run_id = _reencrypt(app, org, provider, second_ref)
    rot.run_worker(app)
    _completed(app, run_id, len(before))
    first, second = _keys(app, org)
    assert (first.state, first.sealed) == ("retired", None)
    assert (second.state, second.key_ref) == ("active", second_ref)
    assert rot.key_ids(app, org) == {second.key_id} and rot.plaintext_digest(app, org) == before
    # And back to a sealed key, generated for the purpose.
    new = crypto.generate_key()
    fp = crypto.fingerprint(crypto.key_id(new))
    run_id = _reencrypt(app, org, provider, new_text=rot.b64(new), generated_fingerprint=fp)
    rot.run_worker(app)
    _completed(app, run_id, len(before))
    *externals, sealed = _keys(app, org)
    assert [(k.state, k.sealed) for k in externals] == [("retired", None)] * 2
    assert (sealed.key_id, sealed.state, sealed.origin) == (
        crypto.key_id(new).hex(),
        "active",
        "generated",
    )
    assert sealed.key_ref is None and sealed.custody != provider
    assert rot.key_ids(app, org) == {sealed.key_id} and rot.plaintext_digest(app, org) == before
    to_vault, to_sealed = _started_details(app, org)
    assert (to_vault["from_custody"], to_vault["to_custody"]) == (provider, provider)
    assert (to_vault["from_key_ref"], to_vault["to_key_ref"]) == (first_ref, second_ref)
    assert (to_sealed["from_custody"], to_sealed["to_custody"]) == (provider, "sealed")
    assert "to_key_ref" not in to_sealed


@VAULT
def test_refusals_change_nothing_and_are_audited(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    old = rot.enable_byok(app, org)
    rot.seed(app, org, conversations=1, messages=3, attachments=0)
    ref = service.new_key()
    assert _refused(app, org, provider, ref).field == "current_key"  # a sealed key must be proved
    wrong = _refused(app, org, provider, ref, current_text=rot.b64(crypto.generate_key()))
    assert wrong.code == "not_active"
    both = _refused(app, org, provider, ref, current_text=rot.b64(old), new_text=rot.b64(old))
    assert both.code == "bad_target"
    reused = _refused(app, org, provider, current_text=rot.b64(old), new_text=rot.b64(old))
    assert reused.code == "same_key"
    service.stop()
    try:
        down = _refused(app, org, provider, ref, current_text=rot.b64(old))
    finally:
        service.start()
    _breaker_closed(app, provider)
    assert down.code == "key_service_unreachable" and down.field == "key_ref"
    assert [(k.state, k.key_ref) for k in _keys(app, org)] == [("active", None)]
    run_id = _reencrypt(app, org, provider, ref, current_text=rot.b64(old))
    busy = _refused(app, org, provider, service.new_key(), current_text=rot.b64(old))
    assert "already in progress" in busy.message
    with app.app_context():
        assert get_session().scalar(select(RotationRun.id)) == run_id
    refusals = [d for d in _started_details(app, org) if d["outcome"] == "failure"]
    assert [d["reason"] for d in refusals] == [
        "empty",
        "not_active",
        "bad_target",
        "same_key",
        "key_service_unreachable",
        "refused",
    ]
    assert refusals[0]["field"] == "current_key"


def test_a_range_waits_for_an_unreachable_service_and_loses_nothing(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    old = rot.enable_byok(app, org)
    rot.seed(app, org, conversations=2, messages=6, attachments=1)
    before = rot.plaintext_digest(app, org)
    run_id = _reencrypt(app, org, provider, service.new_key(), current_text=rot.b64(old))
    with app.app_context():
        db = get_session()
        ranges = list(db.scalars(select(RotationRange).where(RotationRange.run_id == run_id)))
    service.stop()
    try:
        app.extensions["key_services"][provider].forget()  # as after the cache time
        with app.app_context():
            said = process_range(app, run_id, ranges[0].id)
        assert said == "waiting for the key service: key_service_unreachable"
        with app.app_context():
            process_range(app, run_id, ranges[1].id)  # a second range: noted once only
            db = get_session()
            run = db.get(RotationRun, run_id)
            figures = progress(db, run).as_json()
            assert (run.state, figures["waiting_for"], figures["failed"]) == (
                "running",
                "key_service_unreachable",
                0,
            )
            assert figures["done"] == 0
        page = app.test_client()
        login(page, orgs["users"]["admin_a"])
        shown = page.get(f"/rotations/{run_id}/progress").get_data(as_text=True)
        assert 'data-testid="run-waiting"' in shown and "Waiting for the key service" in shown
        with app.app_context():
            db = get_session()
            waited = db.scalars(
                select(RotationRange).where(RotationRange.id.in_([r.id for r in ranges[:2]]))
            )
            assert [(r.state, r.worker, r.cursor) for r in waited] == [("pending", None, None)] * 2
            assert db.scalar(select(RotationFailure.id)) is None
    finally:
        service.start()
    _breaker_closed(app, provider)
    enqueue_ranges(app, run_id, everything=True)
    rot.run_worker(app)
    _completed(app, run_id, len(before))
    assert rot.plaintext_digest(app, org) == before
    with app.app_context():
        history = list(
            get_session().scalars(
                select(RotationEvent.message)
                .where(RotationEvent.run_id == run_id)
                .order_by(RotationEvent.id)
            )
        )
    waits = [m for m in history if m.startswith("Waiting for the key service")]
    assert len(waits) == 1 and "key_service_unreachable" in waits[0]
    assert history.index(waits[0]) < history.index(
        "The key service answered again; the run goes on"
    )


@VAULT
def test_an_item_whose_key_service_does_not_answer_mid_batch_is_not_a_failure(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    old = rot.enable_byok(app, org)
    rot.seed(app, org, conversations=1, messages=3, attachments=0)
    run_id = _reencrypt(app, org, provider, service.new_key(), current_text=rot.b64(old))
    old_id = crypto.key_id(old)
    # What load_keys builds when the service holding the old key does not answer.
    ring = crypto.Keyring(crypto.generate_key(), unavailable={old_id: "key_service_unreachable"})
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        with pytest.raises(KeyServiceWait) as waiting:
            engine.run_batch(
                db.connection(),
                run_id,
                kinds.get("messages"),
                org,
                [old_id.hex()],
                run.new_key_id,
                ring,
                None,
                None,
                None,
                100,
                1 << 20,
            )
        db.rollback()
        assert waiting.value.code == "key_service_unreachable"
        assert db.scalar(select(RotationFailure.id)) is None


@VAULT
def test_verification_waits_for_a_key_service_instead_of_leaving_items_behind(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    first = service.new_key()
    _connect(app, org, provider, first)
    rot.seed(app, org, conversations=1, messages=4, attachments=0)
    before = rot.plaintext_digest(app, org)
    run_id = _reencrypt(app, org, provider, service.new_key())
    another = service.new_key()
    with app.app_context():  # as if every range were done with items still under the old key
        db = get_session()
        db.execute(update(RotationRange).where(RotationRange.run_id == run_id).values(state="done"))
        db.commit()
    service.stop()
    try:
        app.extensions["key_services"][provider].forget()
        with app.app_context():  # as a job runs it
            finish_if_done(app, run_id)
            db = get_session()
            run = db.get(RotationRun, run_id)
            assert (run.state, progress(db, run).waiting_for) == (
                "verifying",
                "key_service_unreachable",
            )
            assert [k.state for k in _keys(app, org)] == ["decrypt_only", "active"]
        assert "already in progress" in _refused(app, org, provider, another).message
    finally:
        service.start()
    _breaker_closed(app, provider)
    with app.app_context():
        finish_if_done(app, run_id, WATCHED_STATES)  # the watchdog's next look: another pass
    rot.run_worker(app)
    _completed(app, run_id, len(before))
    assert [k.state for k in _keys(app, org)] == ["retired", "active"]
    assert rot.plaintext_digest(app, org) == before


@VAULT
def test_no_run_starts_while_items_under_a_key_cannot_be_read(
    app: Flask, orgs: dict, service, provider: str
) -> None:
    org = orgs["a"]["id"]
    _connect(app, org, provider, service.new_key())
    rot.seed(app, org, conversations=1, messages=2, attachments=0)
    target = service.new_key()
    service.stop()
    try:
        app.extensions["key_services"][provider].forget()
        down = _refused(app, org, provider, target)
    finally:
        service.start()
    assert down.code == "key_service_unreachable" and "Nothing was changed" in down.message
    assert [k.state for k in _keys(app, org)] == ["active"]
    (refusal,) = _started_details(app, org)
    assert (refusal["outcome"], refusal["reason"]) == ("failure", "key_service_unreachable")
