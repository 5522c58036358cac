"""The app a worker process runs jobs in: built once per process, never at import time."""

from __future__ import annotations

import os

from flask import Flask

_app: Flask | None = None


def set_app(app: Flask) -> None:
    """Use this app for jobs in this process (the worker sets it before it starts)."""
    global _app
    _app = app


def get_app() -> Flask:
    """Return the process's app, creating it from the environment on first use."""
    global _app
    if _app is None:
        from portal import create_app

        _app = create_app()
    return _app


def fresh_engine(app: Flask) -> None:
    """Drop pooled connections inherited from a parent process (RQ forks per job)."""
    if app.extensions.get("db_engine_pid") != os.getpid():
        app.extensions["db_engine"].dispose(close=False)
        app.extensions["db_engine_pid"] = os.getpid()


def job_app() -> Flask:
    """The process's app, with connections of this process only: what a job starts with."""
    app = get_app()
    fresh_engine(app)
    return app
