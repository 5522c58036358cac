"""Faults of the database underneath: a full disk, killed connections. Nothing is lost."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import event, func, select, text

from portal import crypto
from portal.chat.models import Attachment
from portal.db import get_session
from portal.models import Organization
from portal.rotation.controls import set_throttle
from portal.rotation.models import RotationRun
from portal.rotation.start import start_rotation
from tests.support.api import make_token as _token
from tests.support.rotation import b64, enable_byok, key_ids, plaintext_digest, seed


def test_an_attachment_write_on_a_full_disk_fails_cleanly_and_stores_nothing(app, orgs, services):
    if services.is_postgres:
        pytest.skip("a full disk is simulated with SQLite's max_page_count (SQLITE_FULL)")
    headers = {"Authorization": f"Bearer {_token(app, orgs['a']['id'])}"}
    client = app.test_client()
    conv = client.post("/api/v1/conversations", json={"title": "t"}, headers=headers)
    conv_id = conv.get_json()["id"]
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        # Earlier tests leave free pages that a write could reuse without growing the file.
        conn.exec_driver_sql("VACUUM")
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    def cap(dbapi_connection, _record) -> None:
        # SQLite answers SQLITE_FULL ("database or disk is full") past this size.
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 8}")

    event.listen(engine, "connect", cap)
    engine.dispose()
    try:
        upload = {"file": (io.BytesIO(os.urandom(2 * 1024 * 1024)), "big.bin")}
        response = client.post(
            f"/api/v1/conversations/{conv_id}/attachments", data=upload, headers=headers
        )
        assert response.status_code == 507
        assert response.get_json()["error"] == "storage_full"
        assert "nothing was stored" in response.get_json()["message"]
        with app.app_context():
            assert get_session().scalar(select(func.count()).select_from(Attachment)) == 0
    finally:
        event.remove(engine, "connect", cap)
        engine.dispose()
    again = client.post(
        f"/api/v1/conversations/{conv_id}/attachments",
        data={"file": (io.BytesIO(b"small"), "small.txt")},
        headers=headers,
    )
    assert again.status_code == 201
    page = client.get(f"/api/v1/conversations/{conv_id}", headers=headers).get_json()
    assert [a["filename"] for a in page["attachments"]] == ["small.txt"]


@pytest.mark.slow
def test_rotation_completes_after_its_database_connections_are_killed(
    app, app_config, orgs, services
):
    if not services.is_postgres:
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=20, messages=150, attachments=1)
    before = plaintext_digest(app, org_a)
    new = crypto.generate_key()
    from portal.rotation.queue import enqueue_ranges

    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_a), "cli", b64(old), b64(new))
        set_throttle(db, run, 20, "cli")
        db.commit()
        run_id = run.id
    enqueue_ranges(app, run_id)
    env = {
        **os.environ,
        **{
            k: str(app_config[k])
            for k in ("BYOK_HOME", "DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY")
        },
        "ROTATION_BATCH_ROWS": "100",
        "ROTATION_STALE_SECONDS": "2",
        "ROTATION_WATCHDOG_SECONDS": "1",
        "ROTATION_SLICE_SECONDS": "2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "portal.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        killed = 0
        deadline = time.monotonic() + 120
        state = "running"
        while state not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.7)
            with app.app_context():
                db = get_session()
                if killed < 3:
                    # Cut every other connection to this database, the worker's included.
                    killed += 1
                    db.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                    db.commit()
                    continue
                set_throttle(db, db.get(RotationRun, run_id), None, "cli")
                db.commit()
                state = db.get(RotationRun, run_id).state
                db.commit()
        assert state == "completed"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    app.extensions["db_engine"].dispose()
    assert plaintext_digest(app, org_a) == before
    assert key_ids(app, org_a) == {crypto.key_id(new).hex()}
