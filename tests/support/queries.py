"""Watching the SQL an app sends: the statements that match a pattern, during a block."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask
from sqlalchemy import event


@contextmanager
def statements_matching(app: Flask, pattern: re.Pattern) -> Iterator[list[str]]:
    """Collect the statements matching ``pattern`` that the app's engine runs in the block."""
    seen: list[str] = []

    def _note(_conn, _cursor, statement, *_rest) -> None:
        if pattern.search(statement):
            seen.append(statement)

    engine = app.extensions["db_engine"]
    event.listen(engine, "before_cursor_execute", _note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", _note)
