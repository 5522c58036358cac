"""A key service that stops answering, or refuses, during a full re-encryption: the run waits.

Real worker processes (``python -m portal.cli worker``, tests/support/faults.py) move the
items; the key service is the real one of each provider. With no data-key cache, every job
asks the service for the keys its range needs, so killing the service (or revoking the key)
mid-run makes the next job find it gone. The run must then wait, with no item failed and
nothing moved, and complete once the service is back, losing nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from portal import crypto
from portal.db import get_session
from portal.keys import external
from portal.keys.models import OrgKey
from portal.keys.transaction import key_operation
from portal.models import Organization
from portal.rotation.models import RotationEvent, RotationFailure, RotationRun
from portal.rotation.progress import progress
from portal.rotation.queue import enqueue_ranges
from portal.rotation.reencrypt import start_reencryption
from tests.support import rotation as rot
from tests.support.faults import (
    bulk_seed,
    diagnose,
    done_items,
    private_queue,
    process_env,
    set_throttle,
    wait_for,
    wait_for_end,
    worker_groups,
)
from tests.support.keyservices import PROVIDERS, pointed_at

MESSAGES = 3000
# Throttled batches of 100 (500 items/s) until the service is gone: the run spans the outage.
BATCH_ROWS = 100
THROTTLE = 5


@pytest.fixture(autouse=True, params=PROVIDERS)
def service(request: pytest.FixtureRequest, app_config: dict):
    """The real key service of one provider; no data-key cache, a short breaker."""
    running = pointed_at(
        request, app_config, request.param, KMS_CACHE_SECONDS=0, KMS_BREAKER_SECONDS=1
    )
    private_queue(app_config)
    return running


@pytest.fixture
def workers(app: Flask, tmp_path) -> Iterator[Callable]:
    """Start worker groups; every one still running is SIGKILLed at the end."""
    with worker_groups(tmp_path) as start:
        yield start


def _env(app_config: dict, service) -> dict[str, str]:
    """The worker processes' environment: the test's services and the key service."""
    settings = {k: str(v) for k, v in service.config.items() if v is not None}
    return process_env(
        app_config,
        **settings,
        KMS_CACHE_SECONDS="0",
        KMS_BREAKER_SECONDS="1",
        ROTATION_BATCH_ROWS=str(BATCH_ROWS),
        ROTATION_SLICE_SECONDS="1",  # the next job, which finds the service gone, comes sooner
    )


def _start(app: Flask, org_id: uuid.UUID, provider: str, ref: str, **texts: str) -> uuid.UUID:
    """Start a full re-encryption to the service's key ``ref``, throttled, and queue it."""
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        with key_operation(db):
            target = external.read_ref(org.id, provider, ref)
            run_id = start_reencryption(db, org, "cli", target=target, **texts).id
    set_throttle(app, run_id, THROTTLE)
    enqueue_ranges(app, run_id)
    return run_id


def _status(app: Flask, run_id: uuid.UUID) -> dict:
    """The run's progress as status.json and ``rotation status --json`` give it."""
    with app.extensions["db_sessionmaker"]() as db:
        return progress(db, db.get(RotationRun, run_id)).as_json()


def _history(app: Flask, run_id: uuid.UUID) -> list[str]:
    """The run's own history lines, oldest first."""
    with app.extensions["db_sessionmaker"]() as db:
        return list(
            db.scalars(
                select(RotationEvent.message)
                .where(RotationEvent.run_id == run_id)
                .order_by(RotationEvent.id)
            )
        )


def _waits_through_outage(
    app: Flask, run_id: uuid.UUID, code: str, outage: Callable, back: Callable, log: Callable
) -> None:
    """Cause the outage once items are moving; the run waits, then goes on once it is over."""
    wait_for(
        "items to move",
        lambda: done_items(app, run_id) >= 2 * BATCH_ROWS,
        30,
        on_timeout=lambda: diagnose(app, run_id) + log(),
    )
    outage()
    try:
        status = wait_for(
            f"the run to wait for the key service ({code})",
            lambda: (lambda s: s if s["waiting_for"] == code else None)(_status(app, run_id)),
            20,
            on_timeout=lambda: diagnose(app, run_id) + log(),
        )
        assert status["state"] == "running" and status["failed"] == 0, status
        assert status["done"] < status["total"], "the run ended before the outage bit"
        time.sleep(1.0)  # waiting means nothing moves and nothing fails
        assert (_status(app, run_id)["done"], _status(app, run_id)["failed"]) == (
            status["done"],
            0,
        )
    finally:
        back()
    set_throttle(app, run_id, None)


def _assert_complete(
    app: Flask, org_id: uuid.UUID, run_id: uuid.UUID, before: dict, old: str, log: Callable
) -> None:
    """Completed and verified: every item under the new key, readable, none failed or lost."""
    run = wait_for_end(app, run_id, 60, describe=log)
    status = _status(app, run_id)
    assert run.state == "completed", diagnose(app, run_id) + log()
    assert (status["done"], status["failed"], status["waiting_for"]) == (len(before), 0, None)
    with app.app_context():
        db = get_session()
        assert db.scalar(select(RotationFailure.id).where(RotationFailure.run_id == run_id)) is None
        new = db.scalar(select(OrgKey).where(OrgKey.key_id == run.new_key_id))
        retired = db.scalar(select(OrgKey).where(OrgKey.key_id == old))
        assert (retired.state, retired.sealed) == ("retired", None)
    assert rot.key_ids(app, org_id) == {new.key_id}
    assert rot.plaintext_digest(app, org_id) == before
    history = _history(app, run_id)
    waits = [m for m in history if m.startswith("Waiting for the key service")]
    assert len(waits) == 1, history
    assert history.index(waits[0]) < history.index(
        "The key service answered again; the run goes on"
    )


def test_service_killed_mid_run_waits_then_completes_with_nothing_lost(
    app: Flask, app_config: dict, orgs: dict, service, workers
) -> None:
    worker = workers(_env(app_config, service))  # it starts up while the data is written
    org = orgs["a"]["id"]
    old = rot.enable_byok(app, org)
    bulk_seed(app, org, MESSAGES, conversations=10, attachments=4)
    before = rot.plaintext_digest(app, org)
    run_id = _start(app, org, service.provider, service.new_key(), current_text=rot.b64(old))
    _waits_through_outage(
        app, run_id, "key_service_unreachable", service.stop, service.start, worker.log
    )
    _assert_complete(app, org, run_id, before, crypto.key_id(old).hex(), worker.log)


def test_old_key_revoked_mid_run_waits_then_completes_once_restored(
    app: Flask, app_config: dict, orgs: dict, service, workers
) -> None:
    worker = workers(_env(app_config, service))  # it starts up while the data is written
    org = orgs["a"]["id"]
    first = service.new_key()
    with app.app_context():
        db = get_session()
        organisation = db.get(Organization, org)
        with key_operation(db):
            external.test_connection(db, organisation, "cli", service.provider, first)
            marker = external.tested_marker(service.provider, first, None)
            row = external.connect(db, organisation, "cli", service.provider, first, tested=marker)
            first_id = row.key_id
    bulk_seed(app, org, MESSAGES, conversations=10, attachments=4)
    before = rot.plaintext_digest(app, org)
    run_id = _start(app, org, service.provider, service.new_key())
    _waits_through_outage(
        app,
        run_id,
        "key_access_revoked",
        lambda: service.revoke(first),
        lambda: service.restore(first),
        worker.log,
    )
    _assert_complete(app, org, run_id, before, first_id, worker.log)
