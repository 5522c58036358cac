"""Alembic environment: runs against the connection or URL that portal.migrate hands it."""

from __future__ import annotations

from alembic import context

import portal.audit.models  # noqa: F401  (registers tables on Base.metadata)
import portal.chat.models  # noqa: F401
import portal.keys.models  # noqa: F401
import portal.models  # noqa: F401
import portal.rotation.models  # noqa: F401
from portal.db import Base, make_engine

target_metadata = Base.metadata
config = context.config


def run_migrations_offline() -> None:
    """Emit SQL for the configured URL without connecting."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply migrations over a live connection (one transaction per migration run)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:
    """Configure the context on a connection and migrate."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
