"""A run moves items under EVERY key but its target, retires each emptied key, and resumes.

Issue 11, point 1: a rotation used to move only the items under the key that was active
when it started, so a cancelled run's older key, or a BYOK key from before a Disable and
re-Enable, kept its items for good. The compliance page now warns about such items.
"""

from __future__ import annotations

import json
import re

from sqlalchemy import select, text

from portal import crypto
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.keys import operations as ops
from portal.keys.models import OrgKey
from portal.models import Organization
from portal.rotation.common import RotationError
from portal.rotation.controls import can_resume, control, failure_count
from portal.rotation.models import RotationEvent, RotationRange, RotationRun
from portal.rotation.progress import progress as run_progress
from portal.rotation.start import start_encrypt_existing
from portal.worker_app import set_app
from tests.support.processes import run_cli
from tests.support.rotation import enable_byok, key_ids, plaintext_digest, run_worker, seed
from tests.support.rotation import start_and_enqueue as _start
from tests.support.web import csrf_token, login

PAGE = "/settings/compliance"
MOVE = f"{PAGE}/byok/move-leftover"


def kid(key: bytes) -> str:
    """The hex key id of a key."""
    return crypto.key_id(key).hex()


def _one_throttled_batch_then_cancel(app, run_id, rows: int = 5) -> None:
    """Let the real job move one small batch of messages, then cancel the run."""
    from jobs.rotation import process_range

    saved = {k: app.config[k] for k in ("ROTATION_BATCH_ROWS", "ROTATION_SLICE_SECONDS")}
    app.config.update(ROTATION_BATCH_ROWS=rows, ROTATION_SLICE_SECONDS=0)
    set_app(app)
    try:
        with app.app_context():
            db = get_session()
            db.get(RotationRun, run_id).max_batches_per_second = 1.0
            db.commit()
            range_id = db.scalar(
                select(RotationRange.id).where(
                    RotationRange.run_id == run_id, RotationRange.kind == "messages"
                )
            )
        assert process_range(str(run_id), range_id) == "sliced"
    finally:
        app.config.update(saved)
    with app.app_context():
        db = get_session()
        control(db, db.get(RotationRun, run_id), "cancel", "cli")
        db.commit()
    run_worker(app)  # the queued jobs see the cancelled run and stop


def _cancelled_rotation(app, org_id, **data):
    """Enable K1, seed data, start K1→K2, let one throttled batch move, then cancel."""
    k1 = enable_byok(app, org_id)
    seed(app, org_id, **data)
    k2 = crypto.generate_key()
    run_id = _start(app, org_id, k1, k2)
    _one_throttled_batch_then_cancel(app, run_id)
    return k1, k2, run_id


def _encrypt_existing(app, org_id):
    """Start Encrypt existing data, run it to its end; return its id and its source keys."""
    from portal.rotation.queue import enqueue_ranges

    with app.app_context():
        db = get_session()
        run = start_encrypt_existing(db, db.get(Organization, org_id), "cli")
        db.commit()
        run_id, sources = run.id, run.old_key_ids.split(",")
    enqueue_ranges(app, run_id)
    run_worker(app)
    return run_id, sources


def _key_row(app, key_id_hex: str) -> OrgKey:
    with app.app_context():
        db = get_session()
        row = db.scalar(select(OrgKey).where(OrgKey.key_id == key_id_hex))
        db.expunge(row)
        return row


def _counts(app, org_id) -> dict[str, int]:
    """Items per key id (all kinds together)."""
    with app.app_context():
        return {k: sum(v.values()) for k, v in ops.item_counts(get_session(), org_id).items()}


def _run(app, run_id) -> RotationRun:
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        db.expunge(run)
        return run


def _history(app, run_id) -> list[str]:
    with app.app_context():
        return list(
            get_session().scalars(
                select(RotationEvent.message)
                .where(RotationEvent.run_id == run_id)
                .order_by(RotationEvent.id)
            )
        )


def _platform_key(app, org_id) -> str:
    with app.app_context():
        return get_session().scalar(
            select(OrgKey.key_id).where(OrgKey.company_id == org_id, OrgKey.origin == "platform")
        )


# --- the repros of the issue ----------------------------------------------------------------


def test_cancelled_k1_to_k2_then_k2_to_k3_leaves_nothing_under_k1_and_retires_both(app, orgs):
    org_a = orgs["a"]["id"]
    k1, k2, first = _cancelled_rotation(app, org_a, conversations=3, messages=12, attachments=1)
    before = plaintext_digest(app, org_a)
    assert _run(app, first).state == "cancelled"
    split = _counts(app, org_a)
    assert split[kid(k2)] == 5 and split[kid(k1)] > 0  # the cancelled run left most under K1

    k3 = crypto.generate_key()
    second = _start(app, org_a, k2, k3)
    run_worker(app)
    run = _run(app, second)
    assert run.state == "completed", run.error
    assert key_ids(app, org_a) == {kid(k3)}
    assert plaintext_digest(app, org_a) == before
    with app.app_context():
        progress = run_progress(get_session(), run)
    assert progress.done == len(before) and progress.failed == 0
    assert _key_row(app, kid(k1)).state == "retired" and _key_row(app, kid(k1)).sealed is None
    assert _key_row(app, kid(k2)).state == "retired" and _key_row(app, kid(k2)).sealed is None
    assert any("nothing is left under the old keys" in m for m in _history(app, second))


def test_disable_then_enable_k4_then_encrypt_existing_moves_the_earlier_byok_keys_items(app, orgs):
    org_a = orgs["a"]["id"]
    slug = orgs["a"]["slug"]
    seed(app, org_a, conversations=1, messages=3, attachments=0)  # before BYOK: platform key
    k1 = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=4, attachments=1)
    with app.app_context():
        db = get_session()
        ops.disable(db, db.get(Organization, org_a), "cli", slug, True)
        db.commit()
    seed(app, org_a, conversations=1, messages=2, attachments=0)  # BYOK off: platform key
    before = plaintext_digest(app, org_a)
    platform = _platform_key(app, org_a)
    k4 = enable_byok(app, org_a)
    run_id, sources = _encrypt_existing(app, org_a)
    assert set(sources) == {platform, kid(k1)}
    assert _run(app, run_id).state == "completed"
    assert key_ids(app, org_a) == {kid(k4)}
    assert plaintext_digest(app, org_a) == before
    assert _key_row(app, kid(k1)).state == "retired"
    assert _key_row(app, platform).state == "retired"


def test_each_key_is_retired_only_when_nothing_is_under_it(app, orgs):
    """A failed item keeps its own key (decrypt-only); the other emptied key is retired."""
    org_a = orgs["a"]["id"]
    k1, k2, first = _cancelled_rotation(app, org_a, conversations=2, messages=10, attachments=0)
    with app.app_context():
        db = get_session()
        # Damage the last message still under K1 (the start samples only the active key's).
        victim = db.execute(
            text("SELECT id, body_ct FROM messages WHERE key_id = :k ORDER BY id DESC LIMIT 1"),
            {"k": kid(k1)},
        ).one()
        broken = bytes(victim.body_ct[:-1]) + bytes([victim.body_ct[-1] ^ 1])
        db.execute(
            text("UPDATE messages SET body_ct = :b WHERE id = :i"), {"b": broken, "i": victim.id}
        )
        db.commit()
    k3 = crypto.generate_key()
    second = _start(app, org_a, k2, k3)
    run_worker(app)
    run = _run(app, second)
    assert run.state == "completed", run.error
    with app.app_context():
        assert failure_count(get_session(), run) == 1
    assert _counts(app, org_a) == {kid(k3): 21, kid(k1): 1}
    assert _key_row(app, kid(k1)).state == "decrypt_only"  # still holds the failed item
    assert _key_row(app, kid(k2)).state == "retired"  # emptied: retired on its own


def test_a_lost_keys_items_are_counted_and_reported_never_dropped(app, orgs):
    org_a = orgs["a"]["id"]
    slug = orgs["a"]["slug"]
    k1 = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=4, attachments=0)
    with app.app_context():
        db = get_session()
        ops.declare_lost(db, db.get(Organization, org_a), "cli", slug)
        db.commit()
    seed(app, org_a, conversations=1, messages=2, attachments=0)  # under the platform key
    k2 = enable_byok(app, org_a)
    run_id, sources = _encrypt_existing(app, org_a)
    assert kid(k1) not in sources
    assert _run(app, run_id).state == "completed"
    assert _counts(app, org_a) == {kid(k2): 3, kid(k1): 5}  # lost: untouched, not dropped
    assert _key_row(app, kid(k1)).state == "lost"
    fp = crypto.fingerprint(crypto.key_id(k1))
    assert any(f"5 items under key {fp} (lost) cannot be moved" in m for m in _history(app, run_id))
    with app.app_context():
        done = get_session().scalar(
            select(AuditEvent).where(AuditEvent.action == "BYOK.rotation_completed")
        )
        assert json.loads(done.details)["unmovable"] == 5


# --- resuming a cancelled run ---------------------------------------------------------------


def test_a_cancelled_run_can_be_resumed_and_completes(app, orgs):
    org_a = orgs["a"]["id"]
    k1, k2, run_id = _cancelled_rotation(app, org_a, conversations=2, messages=8, attachments=1)
    before = plaintext_digest(app, org_a)
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        assert can_resume(db, run)
        control(db, run, "resume", "cli")
        db.commit()
        assert run.state == "running" and run.finished_at is None
    from portal.rotation.queue import enqueue_ranges

    enqueue_ranges(app, run_id)
    run_worker(app)
    run = _run(app, run_id)
    assert run.state == "completed", run.error
    assert key_ids(app, org_a) == {kid(k2)}
    assert plaintext_digest(app, org_a) == before
    assert _key_row(app, kid(k1)).state == "retired"
    with app.app_context():
        progress = run_progress(get_session(), run)
        assert progress.done == len(before) and progress.percent() == 100
        assert not can_resume(get_session(), run)


def test_a_cancelled_run_is_not_resumable_once_another_run_started(app, orgs):
    org_a = orgs["a"]["id"]
    k1, k2, first = _cancelled_rotation(app, org_a, conversations=1, messages=8, attachments=0)
    _start(app, org_a, k2, crypto.generate_key())
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, first)
        assert not can_resume(db, run)
        try:
            control(db, run, "resume", "cli")
        except RotationError as exc:
            assert "in progress" in exc.message
        else:
            raise AssertionError("a superseded cancelled run was resumed")
        db.rollback()
        assert db.get(RotationRun, first).state == "cancelled"


def test_cli_rotation_resume_resumes_a_cancelled_run(app, orgs, cli_env):
    org_a = orgs["a"]["id"]
    k1, k2, run_id = _cancelled_rotation(app, org_a, conversations=1, messages=8, attachments=0)
    resumed = run_cli(cli_env, "rotation", "resume", str(run_id))
    assert resumed.returncode == 0, resumed.stderr
    assert "running" in resumed.stdout
    run_worker(app)
    assert _run(app, run_id).state == "completed"
    assert key_ids(app, org_a) == {kid(k2)}
    again = run_cli(cli_env, "rotation", "resume", str(run_id))
    assert again.returncode == 1 and "nothing to resume" in again.stderr


def test_web_resume_of_a_cancelled_run(app, orgs, login_as):
    org_a = orgs["a"]["id"]
    k1, k2, run_id = _cancelled_rotation(app, org_a, conversations=1, messages=8, attachments=0)
    client = login_as("admin_a")
    url = f"/rotations/{run_id}"
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, url)}
    assert client.post(f"{url}/resume", headers=headers).status_code == 200
    run_worker(app)
    assert _run(app, run_id).state == "completed"
    assert key_ids(app, org_a) == {kid(k2)}


# --- the compliance page's warning and its button -------------------------------------------


def _leftover_section(html: str) -> str | None:
    match = re.search(r'<section[^>]*data-testid="leftover".*?</section>', html, re.S)
    return match.group(0) if match else None


def test_compliance_page_warns_about_items_under_a_key_no_run_is_moving(app, orgs, login_as):
    org_a = orgs["a"]["id"]
    k1 = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=6, attachments=1)
    k2 = crypto.generate_key()
    run_id = _start(app, org_a, k1, k2)
    client = login_as("admin_a")
    # While the run is moving K1's items there is nothing to warn about.
    assert _leftover_section(client.get(PAGE).get_data(as_text=True)) is None
    _one_throttled_batch_then_cancel(app, run_id)
    section = _leftover_section(client.get(PAGE).get_data(as_text=True))
    assert section is not None
    fp = crypto.fingerprint(crypto.key_id(k1))
    row = re.search(rf'<tr data-leftover-fingerprint="{fp}">(.*?)</tr>', section, re.S)
    assert row, section
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    assert cells[-3:] == ["7", "2", "2"]  # messages, attachments, conversations under K1
    assert f'action="{MOVE}"' in section and 'name="csrf_token"' in section
    assert "Move them to the active key" in section

    # One click: a run through the same machinery, audited like encrypt-existing.
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(client, PAGE)}
    started = client.post(MOVE, headers=headers)
    assert started.status_code == 200, started.get_data(as_text=True)
    assert started.headers["HX-Redirect"].startswith("/rotations/")
    with app.app_context():
        db = get_session()
        run = db.scalar(select(RotationRun).where(RotationRun.id != run_id))
        assert run.kind == "encrypt_existing" and run.new_key_id == kid(k2)
        assert kid(k1) in run.old_key_ids.split(",")
        event = db.scalar(
            select(AuditEvent).where(AuditEvent.action == "BYOK.encrypt_existing_started")
        )
        assert event.actor_label == orgs["users"]["admin_a"]
        assert event.company_id == org_a and event.outcome == "success"
        assert json.loads(event.details)["run_id"] == str(run.id)
    run_worker(app)
    assert key_ids(app, org_a) == {kid(k2)}
    assert _leftover_section(client.get(PAGE).get_data(as_text=True)) is None


def test_the_move_button_is_for_admins_of_the_organisation_only(app, orgs, login_as):
    org_a = orgs["a"]["id"]
    _k1, _k2, run_id = _cancelled_rotation(app, org_a, conversations=1, messages=6, attachments=0)
    before = _counts(app, org_a)

    # The auditor sees the warning but no form, and may not post it.
    auditor = app.test_client()
    assert login(auditor, orgs["users"]["auditor_a"]).status_code == 302
    section = _leftover_section(auditor.get(PAGE).get_data(as_text=True))
    assert section is not None and "<form" not in section
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(auditor, PAGE)}
    assert auditor.post(MOVE, headers=headers).status_code == 403

    member = app.test_client()
    assert login(member, orgs["users"]["member_a"]).status_code == 302
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(member, "/")}
    assert member.post(MOVE, headers=headers).status_code == 403

    # Without the CSRF token: refused.
    admin = login_as("admin_a")
    assert admin.post(MOVE, headers={"HX-Request": "true"}).status_code == 400

    # Org B's admin sees no warning and moves nothing of org A.
    other = app.test_client()
    assert login(other, orgs["users"]["admin_b"]).status_code == 302
    assert _leftover_section(other.get(PAGE).get_data(as_text=True)) is None
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(other, PAGE)}
    refused = other.post(MOVE, headers=headers)
    assert refused.status_code == 422
    assert "Nothing to move" in refused.get_data(as_text=True)
    with app.app_context():
        assert get_session().scalar(select(RotationRun).where(RotationRun.id != run_id)) is None
    assert _counts(app, org_a) == before
