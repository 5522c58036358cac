"""Helpers shared by the benchmarks: throwaway PostgreSQL databases and fast seeding."""

from __future__ import annotations

import base64
import os
import secrets
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from portal import crypto  # noqa: E402
from portal.chat.kinds import associated_data as ad  # noqa: E402

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


def _copy(conn, table: str, columns: list[str], rows) -> None:
    """Bulk-load rows with COPY (psycopg 3)."""
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def seed(app, org_id: uuid.UUID, key: bytes, messages: int, attachments: int) -> None:
    """Write real ciphertexts under ``key`` for every kind of item, quickly (COPY)."""
    ring = crypto.Keyring(key)
    kid = crypto.key_id(key).hex()
    conversations = max(1, messages // 50)
    conv_ids = [uuid.uuid4() for _ in range(conversations)]
    now = "2026-01-01 00:00:00+00"
    engine = app.extensions["db_engine"]
    with engine.begin() as conn:
        _copy(
            conn,
            "conversations",
            ["id", "company_id", "key_id", "title_ct", "metadata_ct", "created_at"],
            (
                (
                    c,
                    org_id,
                    kid,
                    bytes(
                        ring.encrypt(
                            f"conversation {i}".encode(), ad(org_id, "conversations", "title", c)
                        )
                    ),
                    bytes(
                        ring.encrypt(
                            b'{"channel":"bench"}', ad(org_id, "conversations", "metadata", c)
                        )
                    ),
                    now,
                )
                for i, c in enumerate(conv_ids)
            ),
        )
        body = b"x" * MESSAGE_BYTES

        def message_rows():
            for i in range(messages):
                mid = uuid.uuid4()
                yield (
                    mid,
                    org_id,
                    conv_ids[i % conversations],
                    kid,
                    "bench",
                    bytes(ring.encrypt(body, ad(org_id, "messages", "body", mid))),
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
                aid = uuid.uuid4()
                yield (
                    aid,
                    org_id,
                    conv_ids[i % conversations],
                    kid,
                    bytes(ring.encrypt(b"file.bin", ad(org_id, "attachments", "filename", aid))),
                    bytes(ring.encrypt(content, ad(org_id, "attachments", "content", aid))),
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
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE conversations; ANALYZE messages; ANALYZE attachments")


def b64(key: bytes) -> str:
    """Base64 of a key."""
    return base64.b64encode(key).decode()
