"""Helpers shared by the benchmarks: throwaway PostgreSQL databases and fast seeding."""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, inspect, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from portal import crypto  # noqa: E402
from portal.db import new_id  # noqa: E402

MESSAGE_BYTES = 300
ATTACHMENT_BYTES = 256 * 1024


def _admin(url: str):
    """An autocommit engine on the server's maintenance database."""
    return create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )


def create_database(base: str) -> tuple[str, str]:
    """Create a throwaway database; return (url, name)."""
    name = f"byok_bench_{os.getpid()}_{secrets.token_hex(2)}"
    with _admin(base).connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(base).set(database=name).render_as_string(hide_password=False), name


def drop_database(base: str, name: str) -> None:
    """Drop the throwaway database."""
    with _admin(base).connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def column_types(conn, table: str) -> dict[str, tuple[int, str]]:
    """Each column's type oid and name, as the database has it (the layout may change)."""
    rows = conn.exec_driver_sql(
        "SELECT a.attname, a.atttypid::int, t.typname FROM pg_attribute a "
        "JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        (table,),
    )
    return {name: (oid, typname) for name, oid, typname in rows}


def key_value(conn, table: str, key_id: bytes):
    """A key id as the table's ``key_id`` column stores it (hex text, bytes or a bigint)."""
    typname = column_types(conn, table)["key_id"][1]
    if typname == "bytea":
        return key_id
    if typname in ("int8", "int4"):
        return int.from_bytes(key_id, "big", signed=True)
    return key_id.hex()


def _copy(conn, table: str, columns: list[str], rows) -> None:
    """Bulk-load rows with a binary COPY (psycopg 3), typed from the catalog."""
    types = column_types(conn, table)
    raw = conn.connection.dbapi_connection
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types([types[c][0] for c in columns])
        for row in rows:
            copy.write_row(row)


def recount(engine, org_id: uuid.UUID) -> bool:
    """Fill the per-key item counters after a COPY (which no write path saw), where the
    product keeps them (``portal.chat.counts`` and its table); False where it does not."""
    if importlib.util.find_spec("portal.chat.counts") is None:
        return False
    if not inspect(engine).has_table("key_item_counts"):
        return False
    from portal.chat import counts

    with engine.begin() as conn:
        counts.recount(conn, org_id)
    return True


def seed(app, org_id: uuid.UUID, key: bytes, messages: int, attachments: int) -> None:
    """Write real ciphertexts under ``key`` for every kind of item, quickly (binary COPY).

    Ids come from ``portal.db.new_id`` in write order, as the product makes them, so rows
    land in the heap and in every id index in the order a live system would have written
    them. One conversation per 50 messages; messages and attachments go round the
    conversations. The per-key counters are rebuilt afterwards where the product has them.
    """
    ring = crypto.Keyring(key)
    cid = str(org_id)
    conversations = max(1, messages // 50)
    conv_ids = [new_id() for _ in range(conversations)]
    now = datetime.now(UTC)
    engine = app.extensions["db_engine"]

    def sealed(data: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
        return ring.encrypt(data, crypto.associated_data(cid, table, column, str(row_id)))

    with engine.begin() as conn:
        kid = key_value(conn, "messages", crypto.key_id(key))
        _copy(
            conn,
            "conversations",
            ["id", "company_id", "key_id", "title_ct", "metadata_ct", "created_at"],
            (
                (
                    c,
                    org_id,
                    kid,
                    sealed(f"conversation {i}".encode(), "conversations", "title", c),
                    sealed(b'{"channel":"bench"}', "conversations", "metadata", c),
                    now,
                )
                for i, c in enumerate(conv_ids)
            ),
        )
        body = b"x" * MESSAGE_BYTES

        def message_rows():
            for i in range(messages):
                mid = new_id()
                yield (
                    mid,
                    org_id,
                    conv_ids[i % conversations],
                    kid,
                    "bench",
                    sealed(body, "messages", "body", mid),
                    now,
                )

        _copy(
            conn,
            "messages",
            ["id", "company_id", "conversation_id", "key_id", "author", "body_ct", "created_at"],
            message_rows(),
        )
        content = os.urandom(ATTACHMENT_BYTES)

        def attachment_rows():
            for i in range(attachments):
                aid = new_id()
                yield (
                    aid,
                    org_id,
                    conv_ids[i % conversations],
                    kid,
                    sealed(b"file.bin", "attachments", "filename", aid),
                    sealed(content, "attachments", "content", aid),
                    "application/octet-stream",
                    ATTACHMENT_BYTES,
                    now,
                )

        _copy(
            conn,
            "attachments",
            [
                "id",
                "company_id",
                "conversation_id",
                "key_id",
                "filename_ct",
                "content_ct",
                "content_type",
                "size",
                "created_at",
            ],
            attachment_rows(),
        )
    recount(engine, org_id)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE conversations; ANALYZE messages; ANALYZE attachments")


def b64(key: bytes) -> str:
    """Base64 of a key."""
    return base64.b64encode(key).decode()
