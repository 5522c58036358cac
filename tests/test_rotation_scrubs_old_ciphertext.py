"""After a completed rotation, the old ciphertext is not left in the database's own files.

SQLite: secure_delete zeroes freed space, and a TRUNCATE checkpoint empties the WAL, so
neither the .sqlite3 file nor its -wal holds an old value. PostgreSQL: the rotated tables are
vacuumed once the run has completed (what remains elsewhere is in docs/operations.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from portal import crypto
from portal.chat.models import Attachment, Conversation, Message
from portal.rotation.models import RotationRun
from portal.rotation.queue import enqueue_ranges
from tests.support.faults import bulk_seed, run_row, start_run
from tests.support.rotation import enable_byok, run_worker

ROTATED_TABLES = ("messages", "attachments", "conversations")


def _ciphertexts(app, org) -> list[bytes]:
    """Every stored ciphertext value of the organisation, as bytes."""
    with app.extensions["db_sessionmaker"]() as db:
        values: list[bytes] = []
        for columns in (
            (Message.body_ct,),
            (Attachment.filename_ct, Attachment.content_ct),
            (Conversation.title_ct, Conversation.metadata_ct),
        ):
            model = columns[0].class_
            for row in db.execute(select(*columns).where(model.company_id == org)):
                values.extend(bytes(v) for v in row)
        return values


def _fingerprints(value: bytes) -> list[bytes]:
    """Pieces that identify a ciphertext wherever a page boundary splits it: its nonce and the
    first bytes after it, and its last 16 bytes (the GCM tag)."""
    return [value[crypto.NONCE_AT : crypto.BODY_AT + 12], value[-16:]]


def _rotate(app, org, old: bytes) -> object:
    """Rotate in this process (a real RQ worker in burst mode) and return the run id."""
    run_id = start_run(app, org, old, crypto.generate_key())
    enqueue_ranges(app, run_id)
    run_worker(app)
    assert run_row(app, run_id).state == "completed", run_row(app, run_id).error
    return run_id


def _seeded(app, orgs) -> tuple:
    """Org A with BYOK on and data whose rows span many pages (attachments overflow them)."""
    org = orgs["a"]["id"]
    old = enable_byok(app, org)
    bulk_seed(app, org, 3_000, 30, 20, attachment_bytes=8192)
    return org, old


def test_no_old_ciphertext_is_left_in_the_sqlite_file_or_its_wal(services, app, orgs):
    if services.is_postgres:
        pytest.skip("scans SQLite's files; PostgreSQL is covered by the vacuum test below")
    org, old = _seeded(app, orgs)
    before = _ciphertexts(app, org)
    _rotate(app, org, old)
    after = set(_ciphertexts(app, org))
    assert len(after) == len(before) and not after & set(before)
    path = Path(make_url(app.config["DATABASE_URL"]).database)
    files = {p.name: p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists()}
    print({name: len(data) for name, data in files.items()})
    left = {
        name: sum(1 for v in before if any(f in data for f in _fingerprints(v)))
        for name, data in files.items()
    }
    assert left == {name: 0 for name in files}, f"old ciphertexts left of {len(before)}: {left}"


def _vacuum_counts(app) -> dict[str, int]:
    """Manual VACUUMs per rotated table, as the statistics collector has them now."""
    import psycopg

    dsn = make_url(app.config["DATABASE_URL"]).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, vacuum_count FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (list(ROTATED_TABLES),),
        ).fetchall()
    return {name: int(count) for name, count in rows}


def test_the_rotated_tables_are_vacuumed_when_a_run_completes_on_postgresql(services, app, orgs):
    if not services.is_postgres:
        pytest.skip("VACUUM and pg_stat_user_tables are PostgreSQL's")
    org, old = _seeded(app, orgs)
    before = _vacuum_counts(app)
    run_id = _rotate(app, org, old)
    deadline = time.monotonic() + 10
    while True:  # statistics reach the shared counters within about a second
        after = _vacuum_counts(app)
        if all(after[t] > before.get(t, 0) for t in ROTATED_TABLES) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {t: after[t] - before.get(t, 0) for t in ROTATED_TABLES} == dict.fromkeys(
        ROTATED_TABLES, 1
    ), (before, after)
    with app.extensions["db_sessionmaker"]() as db:
        assert db.get(RotationRun, run_id).state == "completed"
