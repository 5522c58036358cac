"""A kind registered in portal.chat.kinds is rotated end to end with no other code changed,
and runs made before rotation_run_kinds keep their figures through migration 0006."""

from __future__ import annotations

import os
import uuid

from alembic import command
from sqlalchemy import Uuid, inspect, select, text

from portal import crypto
from portal.chat import kinds
from portal.db import get_session, make_engine, new_id
from portal.keys.models import OrgKey
from portal.keys.service import load_keys
from portal.migrate import alembic_config, current_revision, head_revision, upgrade
from portal.rotation.models import RotationEvent, RotationRun, RotationRunKind
from portal.rotation.progress import progress
from tests.support.kinds import Note
from tests.support.rotation import enable_byok, run_worker, seed, start_and_enqueue
from tests.support.services import _create_pg_database, _drop_pg_database

NOTES = 12


def _write_notes(app, org_id: uuid.UUID, n: int = NOTES) -> dict[uuid.UUID, tuple[bytes, bytes]]:
    """Write n notes under the organisation's active key; return their plaintexts by id."""
    written = {}
    with app.app_context():
        db = get_session()
        ring = load_keys(db, org_id).keyring
        for i in range(n):
            note = Note(id=new_id(), company_id=org_id)
            plain = (f"note {i} ".encode() * (i + 1), f"tag {i}".encode())
            kinds.encrypt_column(ring, note, "text", plain[0])
            kinds.encrypt_column(ring, note, "tag", plain[1])
            note.size = len(note.text_ct) + len(note.tag_ct)
            db.add(note)
            written[note.id] = plain
        db.commit()
    return written


def _notes(app, org_id: uuid.UUID) -> list[Note]:
    """Every note of the organisation, read fresh."""
    with app.app_context():
        db = get_session()
        rows = db.scalars(select(Note).where(Note.company_id == org_id)).all()
        db.expunge_all()
        return list(rows)


def _run(app, run_id) -> tuple[RotationRun, dict, list[str]]:
    """The run, its progress per kind and its history, after the workers are done."""
    with app.app_context():
        db = get_session()
        run = db.get(RotationRun, run_id)
        figures = progress(db, run).kinds
        rows = {r.kind: (r.total, r.done, r.failed) for r in run.per_kind}
        events = list(
            db.scalars(
                select(RotationEvent.message)
                .where(RotationEvent.run_id == run_id)
                .order_by(RotationEvent.id)
            )
        )
        db.expunge_all()
        return run, {"progress": figures, "rows": rows}, events


def _key_state(app, key: bytes) -> str:
    """The stored state of a key."""
    with app.app_context():
        return get_session().scalar(
            select(OrgKey.state).where(OrgKey.key_id == crypto.key_id(key).hex())
        )


def test_a_registered_kind_is_rotated_end_to_end_and_counted_per_kind(app, orgs, notes_kind):
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=3, attachments=1)
    written = _write_notes(app, org_a)
    new = crypto.generate_key()
    run_id = start_and_enqueue(app, org_a, old, new)
    run_worker(app)
    run, figures, _events = _run(app, run_id)
    assert run.state == "completed", run.error
    assert figures["progress"]["notes"] == {"total": NOTES, "done": NOTES, "failed": 0}
    assert figures["rows"]["notes"] == (NOTES, NOTES, 0)
    assert figures["rows"]["messages"] == (3, 3, 0)
    only_new = crypto.Keyring(new)
    for note in _notes(app, org_a):
        assert note.key_id == crypto.key_id(new).hex()
        assert kinds.open_column(only_new, note, "text") == written[note.id][0]
        assert kinds.open_column(only_new, note, "tag") == written[note.id][1]
    assert _key_state(app, old) == "retired"


def test_the_old_key_is_retired_only_after_the_new_kinds_rows_moved(app, orgs, notes_kind):
    """The notes' ranges are marked done unprocessed: verification must find the notes still
    under the old key and send the run round again before it retires that key."""
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=2, attachments=0)
    written = _write_notes(app, org_a, 5)
    new = crypto.generate_key()
    run_id = start_and_enqueue(app, org_a, old, new)
    with app.app_context():
        db = get_session()
        db.execute(
            text("UPDATE rotation_ranges SET state = 'done' WHERE kind = 'notes'"),
        )
        db.commit()
    run_worker(app)
    run, figures, events = _run(app, run_id)
    assert run.state == "completed", run.error
    assert run.passes == 1
    another_pass = next(i for i, e in enumerate(events) if "another pass" in e)
    retired = next(i for i, e in enumerate(events) if "retired" in e)
    assert "5 items left" in events[another_pass] and another_pass < retired
    assert figures["rows"]["notes"] == (5, 5, 0)
    only_new = crypto.Keyring(new)
    assert {n.id: kinds.open_column(only_new, n, "text") for n in _notes(app, org_a)} == {
        i: p[0] for i, p in written.items()
    }
    assert _key_state(app, old) == "retired"


def test_a_note_that_cannot_be_moved_keeps_the_old_key(app, orgs, notes_kind):
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=2, attachments=0)
    _write_notes(app, org_a, 4)
    victim = _notes(app, org_a)[0]
    with app.app_context():
        db = get_session()
        note = db.get(Note, victim.id)
        note.tag_ct = note.tag_ct[:-1] + bytes([note.tag_ct[-1] ^ 1])  # fails authentication
        db.commit()
    run_id = start_and_enqueue(app, org_a, old, crypto.generate_key())
    run_worker(app)
    run, figures, _events = _run(app, run_id)
    assert run.state == "completed", run.error
    assert figures["rows"]["notes"] == (4, 3, 1)
    assert _key_state(app, old) == "decrypt_only"  # a note is still under it


def _db_at_0005(services, tmp_path):
    """A fresh database migrated to revision 0005; return (engine, url, throwaway pg name)."""
    if services.is_postgres:
        url, name = _create_pg_database(os.environ["TEST_DATABASE_URL"])
    else:
        url, name = f"sqlite:///{tmp_path / 'at-0005.sqlite3'}", None
    engine = make_engine(url)
    upgrade(engine, "0005")
    assert current_revision(engine) == "0005"
    return engine, url, name


def _insert_run_at_0005(conn, org_id: uuid.UUID, run_id: uuid.UUID) -> None:
    """A run and its ranges as revision 0005 stored them (one total column per kind)."""
    uid = Uuid().bind_processor(conn.dialect) or (lambda v: v)
    now = "2026-11-30 10:00:00+00:00"
    conn.execute(
        text(
            "INSERT INTO organizations (id, name, slug, tier, created_at) "
            "VALUES (:id, 'Org', 'org', 'dedicated', :now)"
        ),
        {"id": uid(org_id), "now": now},
    )
    conn.execute(
        text(
            "INSERT INTO rotation_runs (id, company_id, kind, old_key_ids, new_key_id, state, "
            "messages_total, attachments_total, metadata_total, passes, started_by, created_at) "
            "VALUES (:id, :org, 'rotation', 'aa', 'bb', 'completed', 40, 3, 7, 0, 'cli', :now)"
        ),
        {"id": uid(run_id), "org": uid(org_id), "now": now},
    )
    for seq, (kind, done, failed) in enumerate(
        [("messages", 25, 0), ("messages", 14, 1), ("attachments", 3, 0), ("metadata", 7, 0)]
    ):
        conn.execute(
            text(
                "INSERT INTO rotation_ranges (run_id, kind, seq, state, done, failed, "
                "bytes_done, attempts) VALUES (:run, :kind, :seq, 'done', :done, :failed, 0, 1)"
            ),
            {"run": uid(run_id), "kind": kind, "seq": seq, "done": done, "failed": failed},
        )


def test_a_run_made_at_revision_0005_is_carried_over_and_back(services, tmp_path):
    engine, url, name = _db_at_0005(services, tmp_path)
    org_id, run_id = uuid.uuid4(), uuid.uuid4()
    uid = Uuid().bind_processor(engine.dialect) or (lambda v: v)
    try:
        with engine.begin() as conn:
            _insert_run_at_0005(conn, org_id, run_id)
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            rows = conn.execute(
                select(RotationRunKind.kind, RotationRunKind.total, RotationRunKind.done)
                .add_columns(RotationRunKind.failed)
                .where(RotationRunKind.run_id == run_id)
                .order_by(RotationRunKind.kind)
            ).all()
        assert [tuple(r) for r in rows] == [
            ("attachments", 3, 3, 0),
            ("messages", 40, 39, 1),
            ("metadata", 7, 7, 0),
        ]
        columns = {c["name"] for c in inspect(engine).get_columns("rotation_runs")}
        assert not {"messages_total", "attachments_total", "metadata_total"} & columns
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        with engine.connect() as conn:
            back = conn.execute(
                text(
                    "SELECT messages_total, attachments_total, metadata_total FROM rotation_runs "
                    "WHERE id = :id"
                ),
                {"id": uid(run_id)},
            ).one()
            ranges = conn.execute(text("SELECT count(*) FROM rotation_ranges")).scalar()
        assert tuple(back) == (40, 3, 7) and ranges == 4
    finally:
        engine.dispose()
        if name:
            _drop_pg_database(os.environ["TEST_DATABASE_URL"], name)
