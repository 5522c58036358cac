"""SQLAlchemy engine and per-request session; models share one declarative base."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import uuid_utils.compat as uuid_utils
from flask import Flask, current_app, g
from sqlalchemy import DateTime, Engine, TypeDecorator, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    """Declarative base of every model; Alembic migrations own the schema."""


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC, on SQLite (which drops zones) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        """Store times in UTC; a naive time is taken to be UTC already."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        """Return stored times as aware UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """Return a fresh row id, known before insert so ciphertext can bind to it.

    A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits, so ids follow
    insertion order. New rows land at the right edge of every id index instead of all over
    it, and a rotation's batches walk the table in the order it was written. Rows written
    before keep their random version-4 ids; both kinds sort and compare as 128-bit values.
    uuid-utils keeps the real clock and counts within a millisecond (RFC 9562 method 1);
    ``uuid6``'s generator moves the timestamp ahead instead, a second per thousand ids.
    """
    return uuid_utils.uuid7()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Give SQLite concurrent readers, a patient writer, enforced foreign keys, and freed
    space overwritten with zeros (a rewritten ciphertext leaves no old copy in free pages)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine for the URL, tuned for SQLite or PostgreSQL."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def scrub_rewritten(engine: Engine, tables: Iterable[str]) -> None:
    """After a committed rewrite of ``tables`` (a completed rotation), clear old row versions
    from the database's files: SQLite checkpoints and truncates its WAL (secure_delete has
    zeroed freed space already); PostgreSQL vacuums the tables. Never raises: a failure here
    is logged and leaves the rewrite as it is.
    """
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                busy, _frames, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                if busy:
                    log.warning("WAL checkpoint after a rotation was blocked by a reader")
            elif engine.dialect.name == "postgresql":
                # VACUUM cannot run inside a transaction block.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                for table in tables:
                    conn.exec_driver_sql(f'VACUUM "{table}"')
    except Exception as exc:  # noqa: BLE001 - hygiene after the commit must not fail a run
        log.warning("clearing old row versions failed: %s: %s", type(exc).__name__, exc)


def init_app(app: Flask) -> None:
    """Attach an engine and session factory to the app and close sessions per request."""
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["db_engine"] = engine
    app.extensions["db_sessionmaker"] = sessionmaker(engine, expire_on_commit=False)

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def get_session() -> Session:
    """Return the session of the current app context, opening it on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["db_sessionmaker"]()
    return g.db_session


def get_engine() -> Engine:
    """Return the engine of the current app."""
    return current_app.extensions["db_engine"]
