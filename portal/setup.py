"""Initialising an installation: instance folder, master key, database schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from flask import Flask

from portal import migrate
from portal.db import get_engine


def initialise(app: Flask) -> Iterator[str]:
    """Create what an installation needs; running it again changes nothing."""
    home = Path(app.config["BYOK_HOME"])
    yield f"instance folder: {home}"
    from portal.keys.service import init_app as load_custody

    load_custody(app, create_master_key=True)
    yield f"master key: {app.extensions['master_key_source']}"
    engine = get_engine()
    before = migrate.current_revision(engine)
    migrate.upgrade(engine)
    after = migrate.current_revision(engine)
    if before == after:
        yield f"database: up to date at revision {after}"
    else:
        yield f"database: migrated from {before or 'empty'} to {after}"
