"""The 25/50/75 % milestones of a run are logged and audited once each, even when two
watchdog jobs of the run record them at the same moment."""

from __future__ import annotations

import contextlib
import threading

from sqlalchemy import func, select, update

from portal import crypto
from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.rotation import watchdog
from portal.rotation.models import RotationEvent, RotationRange
from tests.support.rotation import enable_byok, seed, start_and_enqueue


def test_two_watchdogs_at_once_log_each_milestone_once(app, orgs, monkeypatch):
    org = orgs["a"]["id"]
    old = enable_byok(app, org)
    seed(app, org, conversations=2, messages=5, attachments=1)
    run_id = start_and_enqueue(app, org, old, crypto.generate_key())
    with app.extensions["db_engine"].begin() as conn:  # the work is done: 100 % reached
        conn.execute(
            update(RotationRange)
            .where(RotationRange.run_id == run_id)
            .values(done=10_000, state="done")
        )
    # Both jobs reach the progress read together, unless one is held back by the other's
    # lock (then the barrier gives up after a moment and lets it go on).
    barrier, real = threading.Barrier(2, timeout=2), watchdog.progress

    def together(session, run):
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return real(session, run)

    monkeypatch.setattr(watchdog, "progress", together)
    errors: list[BaseException] = []

    def job() -> None:
        try:
            watchdog.record_milestones(app, run_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with app.app_context():
        db = get_session()
        logged = db.scalars(
            select(RotationEvent.message)
            .where(RotationEvent.run_id == run_id, RotationEvent.message.like("Progress: %"))
            .order_by(RotationEvent.id)
        ).all()
        audited = db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == Action.ROTATION_PROGRESS, AuditEvent.company_id == org)
        )
    assert logged == [f"Progress: {m}% of items re-encrypted" for m in (25, 50, 75)]
    assert audited == 3
