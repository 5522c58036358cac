"""``byok-portal rotation throttle RUN_ID N``: the web page's throttle, from the command line."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select

from portal import crypto
from portal.audit.models import AuditEvent
from portal.rotation.models import RotationRun
from tests.support.faults import run_row, start_run
from tests.support.rotation import enable_byok, seed


def _run(app, orgs) -> uuid.UUID:
    """A rotation run of org A (no jobs queued: nothing moves while the test looks)."""
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=2, attachments=0)
    return start_run(app, orgs["a"]["id"], old, crypto.generate_key())


def _throttle_events(app, run_id: uuid.UUID) -> list[tuple[str, dict]]:
    """The audited throttle changes of the run: actor label and details."""
    with app.extensions["db_sessionmaker"]() as db:
        rows = db.execute(
            select(AuditEvent.actor_label, AuditEvent.details)
            .where(AuditEvent.action == "BYOK.rotation_throttled")
            .order_by(AuditEvent.id)
        )
        events = [(label, json.loads(details)) for label, details in rows]
    return [(label, d) for label, d in events if d.get("run_id") == str(run_id)]


def test_rotation_throttle_sets_limits_and_clears_it_and_is_audited(app, orgs, cli):
    run_id = _run(app, orgs)
    limited = cli("rotation", "throttle", str(run_id), "2.5")
    assert limited.returncode == 0, limited.stderr
    assert "2.5 batches per second" in limited.stdout
    assert run_row(app, run_id).max_batches_per_second == 2.5
    for unlimited in ("0", "none", "NONE"):
        cleared = cli("rotation", "throttle", str(run_id), unlimited)
        assert cleared.returncode == 0, cleared.stderr
        assert "unlimited" in cleared.stdout
        assert run_row(app, run_id).max_batches_per_second is None
    events = _throttle_events(app, run_id)
    assert [d["max_batches_per_second"] for _label, d in events] == [2.5, None, None, None]
    assert {label for label, _d in events} == {"cli"}


def test_rotation_throttle_refuses_bad_values_and_changes_nothing(app, orgs, cli):
    run_id = _run(app, orgs)
    assert cli("rotation", "throttle", str(run_id), "4").returncode == 0
    for bad in ("fast", "-1", "5000", "nan", "inf", ""):
        refused = cli("rotation", "throttle", str(run_id), bad)
        assert refused.returncode != 0, (bad, refused.stdout)
        assert refused.stderr.startswith("error: "), (bad, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert run_row(app, run_id).max_batches_per_second == 4
    assert len(_throttle_events(app, run_id)) == 1


def test_rotation_throttle_refuses_unknown_and_malformed_run_ids(app, orgs, cli):
    _run(app, orgs)
    unknown = cli("rotation", "throttle", str(uuid.uuid4()), "2")
    assert unknown.returncode == 1 and "no rotation run" in unknown.stderr
    malformed = cli("rotation", "throttle", "not-a-run", "2")
    assert malformed.returncode == 1 and "not a run id" in malformed.stderr
    with app.extensions["db_sessionmaker"]() as db:
        assert db.scalar(select(RotationRun.max_batches_per_second)) is None
