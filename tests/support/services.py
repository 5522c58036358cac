"""Where a test run's database and Redis live: throwaway PostgreSQL databases, xdist Redis dbs."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from portal.db import Base


@dataclass
class Services:
    """Where this test run's database and Redis live."""

    database_url: str
    redis_url: str
    home: Path

    @property
    def is_postgres(self) -> bool:
        """Tell whether the run is on PostgreSQL."""
        return self.database_url.startswith("postgresql")


def _create_pg_database(admin_url: str) -> tuple[str, str]:
    """Create a throwaway database next to the one in ``admin_url``; return (url, name)."""
    name = f"byok_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def _drop_pg_database(admin_url: str, name: str) -> None:
    """Drop the throwaway database, closing whatever still holds it."""
    admin = create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _worker_redis_db(url: str | None) -> str | None:
    """Give each pytest-xdist worker its own Redis db: gw0 the configured one, gw1 the one
    below it, and so on (every test flushes its db, which must not touch another worker's).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if not url or worker == "gw0":
        return url
    parts = urlsplit(url)
    base = int(parts.path.lstrip("/") or 0)
    index = base - int(worker.removeprefix("gw"))
    if index < 0:
        raise RuntimeError(f"TEST_REDIS_URL's db {base} leaves no db for xdist worker {worker}")
    return urlunsplit(parts._replace(path=f"/{index}"))


def clean(app: Flask) -> None:
    """Empty every table and the Redis db so the next test starts from nothing."""
    engine = app.extensions["db_engine"]
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            # The audit table's append-only triggers allow deletes only while this flag is set.
            conn.execute(text("INSERT INTO audit_prune_flag (id) VALUES (1)"))
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("DELETE FROM audit_prune_flag"))
    engine.dispose()
    redis.Redis.from_url(app.config["REDIS_URL"]).flushdb()
