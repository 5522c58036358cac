"""Key rotation: the new key encrypts from the start, workers move everything, nothing lost."""

from __future__ import annotations

import pytest
from sqlalchemy import Uuid, bindparam, select, text

from portal import crypto
from portal.chat import kinds
from portal.db import get_session
from portal.keys.models import OrgKey
from portal.models import Organization
from portal.rotation.common import RotationError
from portal.rotation.controls import failure_count
from portal.rotation.models import RotationRun
from portal.rotation.progress import progress as run_progress
from portal.rotation.sources import check_keys, keyring_for_run
from portal.rotation.start import start_rotation
from tests.support.rotation import b64, enable_byok, key_ids, plaintext_digest, run_worker, seed
from tests.support.rotation import start_and_enqueue as _start


def _raw_rows(app, org_id) -> dict:
    """Every stored column of the organisation's data rows, as raw values."""
    with app.app_context():
        db = get_session()
        out = {}
        for table in ("conversations", "messages", "attachments"):
            query = text(f"SELECT * FROM {table} WHERE company_id = :c ORDER BY id").bindparams(
                bindparam("c", type_=Uuid)
            )
            rows = db.execute(query, {"c": org_id}).mappings().all()
            out[table] = [dict(r) for r in rows]
        return out


def test_rotation_moves_every_item_to_the_new_key_and_retires_the_old(app, orgs):
    org_a, org_b = orgs["a"]["id"], orgs["b"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=4, messages=30, attachments=2)
    seed(app, org_b, conversations=2, messages=5)
    before = plaintext_digest(app, org_a)
    other_before = _raw_rows(app, org_b)
    new = crypto.generate_key()
    run_id = _start(app, org_a, old, new)
    run_worker(app)
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert run.state == "completed", run.error
        progress = run_progress(db, run)
        assert progress.done == len(before) and progress.failed == 0
        old_row = db.scalar(select(OrgKey).where(OrgKey.key_id == crypto.key_id(old).hex()))
        assert old_row.state == "retired" and old_row.sealed is None
    assert key_ids(app, org_a) == {crypto.key_id(new).hex()}
    assert plaintext_digest(app, org_a) == before
    assert _raw_rows(app, org_b) == other_before


def test_wrong_current_key_is_refused_before_anything_changes(app, orgs):
    org_a = orgs["a"]["id"]
    enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=3)
    before = _raw_rows(app, org_a)
    with app.app_context():
        db = get_session()
        with pytest.raises(RotationError, match="not the active key"):
            start_rotation(
                db,
                db.get(Organization, org_a),
                "cli",
                b64(crypto.generate_key()),
                b64(crypto.generate_key()),
            )
        db.rollback()
        assert db.scalar(select(RotationRun.id)) is None
    assert _raw_rows(app, org_a) == before


def test_a_current_key_that_decrypts_none_of_the_sample_is_refused(app, orgs):
    """The right key id, but no sampled item opens (all damaged): refused, nothing changed."""
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=3)
    with app.app_context():
        db = get_session()
        db.execute(text("UPDATE messages SET body_ct = substr(body_ct, 1, 20)"))
        db.commit()
    before = _raw_rows(app, org_a)
    with app.app_context():
        db = get_session()
        with pytest.raises(RotationError, match="does not decrypt a stored item"):
            start_rotation(
                db, db.get(Organization, org_a), "cli", b64(old), b64(crypto.generate_key())
            )
        db.rollback()
        assert db.scalar(select(RotationRun.id)) is None
    assert _raw_rows(app, org_a) == before


def test_new_key_must_differ_and_never_have_been_used(app, orgs):
    org_a = orgs["a"]["id"]
    first = enable_byok(app, org_a)
    second = crypto.generate_key()
    run_id = _start(app, org_a, first, second)
    run_worker(app)
    with app.app_context():
        db = get_session()
        assert db.get(RotationRun, run_id).state == "completed"
        org = db.get(Organization, org_a)
        with pytest.raises(RotationError, match="differ"):
            check_keys(db, org, b64(second), b64(second))
        with pytest.raises(RotationError, match="used by your organisation before"):
            check_keys(db, org, b64(second), b64(first))


def test_tampered_item_is_reported_and_everything_else_completes(app, orgs):
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=10, attachments=0)
    with app.app_context():
        db = get_session()
        # The first item by id: the one the start of a rotation tries the current key on first.
        victim = db.execute(text("SELECT id, body_ct FROM messages ORDER BY id LIMIT 1")).one()
        broken = bytes(victim.body_ct[:-1]) + bytes([victim.body_ct[-1] ^ 1])
        db.execute(
            text("UPDATE messages SET body_ct = :b WHERE id = :i"), {"b": broken, "i": victim.id}
        )
        db.commit()
    new = crypto.generate_key()
    run_id = _start(app, org_a, old, new)
    run_worker(app)
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert run.state == "completed"
        assert failure_count(db, run) == 1
        assert run_progress(db, run).failed == 1
        still = db.execute(
            text("SELECT body_ct FROM messages WHERE id = :i"), {"i": victim.id}
        ).scalar_one()
        assert bytes(still) == broken  # left untouched
        old_row = db.scalar(select(OrgKey).where(OrgKey.key_id == crypto.key_id(old).hex()))
        assert old_row.state == "decrypt_only"  # kept while an item is still under it
    assert key_ids(app, org_a) == {crypto.key_id(new).hex(), crypto.key_id(old).hex()}


def test_a_batch_replayed_changes_nothing_the_second_time(app, orgs):
    from portal.rotation import engine

    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=20, attachments=0)
    new = crypto.generate_key()
    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_a), "cli", b64(old), b64(new))
        db.commit()
        ring = keyring_for_run(db, run)
        kind = kinds.get("messages")
        args = (
            db.connection(),
            run.id,
            kind,
            org_a,
            [crypto.key_id(old).hex()],
            run.new_key_id,
            ring,
            None,
            None,
            None,
            1000,
            1 << 24,
        )
        first = engine.run_batch(*args)
        db.commit()
        snapshot = db.execute(text("SELECT id, key_id, body_ct FROM messages ORDER BY id")).all()
        args = (db.connection(), *args[1:])
        second = engine.run_batch(*args)
        db.commit()
        assert first.rewritten == 20
        assert second.rewritten == 0 and second.last_id is None
        assert (
            db.execute(text("SELECT id, key_id, body_ct FROM messages ORDER BY id")).all()
            == snapshot
        )


def test_compare_and_swap_keeps_a_concurrent_edit(app, orgs):
    from portal.rotation import engine

    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=5, attachments=0)
    new = crypto.generate_key()
    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_a), "cli", b64(old), b64(new))
        db.commit()
        ring = keyring_for_run(db, run)
        kind = kinds.get("messages")
        rows = engine.select_batch(
            db.connection(), kind, org_a, [crypto.key_id(old).hex()], None, None, None, 100, 1 << 24
        )
        d = engine.Dialect(db.connection())
        updates, failed, _ = engine.reencrypt(rows, kind, org_a, ring, d)
        # Someone edits one message (written under the new key) after the batch read it.
        edited_id = d.read_uid(rows[0][0])
        from portal.chat.kinds import associated_data as ad

        edit = bytes(
            ring.encrypt(b"edited during the run", ad(org_a, "messages", "body", edited_id))
        )
        db.execute(
            text("UPDATE messages SET body_ct = :b, key_id = :k WHERE id = :i"),
            {"b": edit, "k": run.new_key_id, "i": rows[0][0]},
        )
        written = engine.write_batch(db.connection(), kind, run.new_key_id, updates)
        db.commit()
        assert len(written) == len(updates) - 1
        body = db.execute(
            text("SELECT body_ct FROM messages WHERE id = :i"), {"i": rows[0][0]}
        ).scalar_one()
        assert (
            ring.decrypt(bytes(body), ad(org_a, "messages", "body", edited_id))
            == b"edited during the run"
        )


def test_cli_rotates_reports_and_steers_a_run(app, app_config, orgs):
    import json
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        **{k: app_config[k] for k in ("BYOK_HOME", "DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY")},
    }

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "portal.cli", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=4)
    wrong = cli(
        "key",
        "rotate",
        "--org",
        "org-a",
        stdin=f"{b64(crypto.generate_key())}\n{b64(crypto.generate_key())}\n",
    )
    assert wrong.returncode == 1 and "not the active key" in wrong.stderr
    new = crypto.generate_key()
    started = cli("key", "rotate", "--org", "org-a", stdin=f"{b64(old)}\n{b64(new)}\n")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip().splitlines()[-1]
    assert cli("rotation", "pause", run_id).returncode == 0
    assert "paused" in cli("rotation", "list", "--org", "org-a").stdout
    resumed = cli("rotation", "resume", run_id)
    assert resumed.returncode == 0 and "running" in resumed.stdout
    run_worker(app)
    status = json.loads(cli("rotation", "status", run_id, "--json").stdout)
    assert status["state"] == "completed"
    assert status["messages"] == {"total": 8, "done": 8, "failed": 0}
    assert status["metadata"]["done"] == 2 and status["attachments"]["done"] == 2
    refused = cli("rotation", "cancel", run_id)
    assert refused.returncode == 1 and "cannot be cancelled" in refused.stderr
    assert key_ids(app, org_a) == {crypto.key_id(new).hex()}


def test_watchdog_records_progress_milestones_once(app, orgs):
    from jobs.rotation import watchdog
    from portal.rotation.models import RotationEvent, RotationRange

    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=4)
    run_id = _start(app, org_a, old, crypto.generate_key())
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        total = run.total
        # Pretend the workers got just over half way.
        first = db.scalars(select(RotationRange).where(RotationRange.run_id == run_id)).first()
        first.done = total // 2 + 1
        db.commit()
    from portal.worker_app import set_app

    set_app(app)
    watchdog(str(run_id))
    watchdog(str(run_id))
    with app.app_context():
        messages = [
            e.message
            for e in get_session().scalars(
                select(RotationEvent).where(
                    RotationEvent.run_id == run_id, RotationEvent.message.like("Progress: %")
                )
            )
        ]
    assert messages == [
        "Progress: 25% of items re-encrypted",
        "Progress: 50% of items re-encrypted",
    ]


def test_large_attachments_are_split_into_ranges_by_size(app, orgs, monkeypatch):
    from portal.rotation import planning
    from portal.rotation.models import RotationRange

    monkeypatch.setattr(planning, "BYTES_PER_RANGE", 4096)
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=3, messages=1, attachments=2, attachment_bytes=3000)
    new = crypto.generate_key()
    run_id = _start(app, org_a, old, new)
    with app.app_context():
        kinds = [
            r.kind
            for r in get_session().scalars(
                select(RotationRange).where(RotationRange.run_id == run_id)
            )
        ]
    # Six attachments of 3,000 bytes: 18,000 bytes in ranges of 4,096 bytes -> 5 ranges.
    assert kinds.count("attachments") == 5
    assert kinds.count("messages") == 1
    run_worker(app)
    with app.app_context():
        assert get_session().get(RotationRun, run_id).state == "completed"
    assert key_ids(app, org_a) == {crypto.key_id(new).hex()}
