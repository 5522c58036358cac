"""Migration 0008 (the layout built for rotation) on a populated database, on both engines.

The data is written through the product itself, part of it with the random version-4 ids
rows had before #14, then the database goes back to 0007 and up again: every row is
byte-identical (content hashes), the per-key counters equal real counts, every item still
decrypts, and a rotation over the mix of old and new ids moves everything.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from alembic import command
from sqlalchemy import inspect, text

from portal import create_app
from portal.chat import counts
from portal.chat import service as chat
from portal.db import get_session, make_engine
from portal.keys import operations as ops
from portal.migrate import alembic_config, current_revision, head_revision, upgrade
from portal.models import Organization
from portal.orgs import create_org
from tests.support.rotation import (
    enable_byok,
    plaintext_digest,
    run_worker,
    start_and_enqueue,
)
from tests.support.services import _create_pg_database, _drop_pg_database, clean

TABLES = {
    "conversations": "id, company_id, key_id, title_ct, metadata_ct, created_at",
    "messages": "id, company_id, conversation_id, key_id, author, body_ct, created_at",
    "attachments": "id, company_id, conversation_id, key_id, filename_ct, content_ct, "
    "content_type, size, created_at",
}
KINDS = {"conversations": "metadata", "messages": "messages", "attachments": "attachments"}


@pytest.fixture
def fresh(services, app_config, tmp_path):
    """An app on a database of its own, migrated to head (dropped afterwards)."""
    if services.is_postgres:
        url, name = _create_pg_database(os.environ["TEST_DATABASE_URL"])
    else:
        url, name = f"sqlite:///{tmp_path / 'layout.sqlite3'}", None
    engine = make_engine(url)
    upgrade(engine)
    application = create_app({**app_config, "DATABASE_URL": url})
    try:
        yield application, engine, url
    finally:
        clean(application)
        application.extensions["db_engine"].dispose()
        engine.dispose()
        if name:
            _drop_pg_database(os.environ["TEST_DATABASE_URL"], name)


def _write(app, org_id: uuid.UUID, label: str, monkeypatch=None) -> None:
    """A conversation with messages and an attachment; some edited, some deleted."""
    with app.app_context():
        db = get_session()
        conv = chat.create_conversation(db, org_id, f"{label} conversation", {"label": label})
        msgs = [chat.add_message(db, conv, "user", f"{label} message {i}") for i in range(6)]
        chat.add_attachment(db, conv, f"{label}.txt", "text/plain", label.encode() * 100)
        chat.edit_message(db, msgs[0], f"{label} message 0, edited")
        db.commit()
        chat.delete_message(db, org_id, msgs[1].id)
        db.commit()


def _row_hashes(engine) -> dict[str, str]:
    """sha256 of every data row's stored bytes, by table and id."""
    out = {}
    with engine.connect() as conn:
        for table, columns in TABLES.items():
            for row in conn.execute(text(f"SELECT {columns} FROM {table}")):
                digest = hashlib.sha256(repr(tuple(_plain(v) for v in row)).encode()).hexdigest()
                out[f"{table}:{_plain(row[0])}"] = digest
    return out


def _plain(value):
    """One stored value in a form both engines and both revisions print the same way."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return value.hex
    return str(value) if not isinstance(value, bytes | int) else value


def _real_counts(engine, org_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """Items per key and kind, counted in the data itself."""
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        uid = org_id if engine.dialect.name == "postgresql" else org_id.hex
        for table, kind in KINDS.items():
            rows = conn.execute(
                text(f"SELECT key_id, COUNT(*) FROM {table} WHERE company_id = :c GROUP BY key_id"),
                {"c": uid},
            )
            for key_id, n in rows:
                out.setdefault(key_id, dict.fromkeys(KINDS.values(), 0))[kind] = n
    return out


def test_0008_upgrades_a_populated_database_without_changing_an_item(fresh, monkeypatch):
    app, engine, url = fresh
    with app.app_context():
        db = get_session()
        org_id = create_org(db, "Layout Org", "org_community").id
        other_id = create_org(db, "Other Org", "org_community").id
        db.commit()
    # Rows written before #14 had random version-4 ids: write the first ones that way.
    with monkeypatch.context() as patched:
        patched.setattr(chat, "new_id", uuid.uuid4)
        _write(app, org_id, "legacy")
        _write(app, other_id, "other")
    key1 = enable_byok(app, org_id)
    _write(app, org_id, "after byok")
    before_plain = plaintext_digest(app, org_id)

    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007")
    assert "key_item_counts" not in inspect(engine).get_table_names()
    before = _row_hashes(engine)
    assert len(before) == 2 * 7 + 7  # two orgs' legacy data, and org A's data after BYOK

    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert _row_hashes(engine) == before
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("messages")}
    assert "ix_messages_company_id_id" in indexes and "ix_messages_company_key" not in indexes
    with app.app_context():
        db = get_session()
        for org in (org_id, other_id):
            assert counts.item_counts(db, org) == _real_counts(engine, org)
        status = ops.status(db, db.get(Organization, org_id))
        # The legacy conversation, its 5 messages left and its attachment: before BYOK.
        assert status.platform_items == 7
    assert plaintext_digest(app, org_id) == before_plain

    # A rotation over old random ids and new time-ordered ones moves every item.
    key2 = os.urandom(32)
    run_id = start_and_enqueue(app, org_id, key1, key2)
    run_worker(app)
    with app.app_context():
        db = get_session()
        from portal.rotation.models import RotationRun

        assert db.get(RotationRun, run_id).state == "completed"
        held = counts.item_counts(db, org_id)
    assert held == _real_counts(engine, org_id)
    assert plaintext_digest(app, org_id) == before_plain
