"""The ``cli`` fixture: ``byok-portal`` run in-process on the test's app (click's CliRunner).

A result looks like a finished process (``returncode``, ``stdout``, ``stderr``), so a test
reads the same whether it runs the command in-process or as a real process (``run_cli``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask

from portal.cli import main


@dataclass(frozen=True)
class Ran:
    """What a command printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str


def invoke(app: Flask, *args: str, stdin: str | None = None) -> Ran:
    """Run the command on ``app``; an unexpected exception fails the test, as a traceback."""
    result = app.test_cli_runner().invoke(main, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli(app: Flask) -> Callable[..., Ran]:
    """Run ``byok-portal ARGS`` in-process on this test's app: ``cli("key", "status", ...)``."""

    def _cli(*args: str, stdin: str | None = None) -> Ran:
        return invoke(app, *args, stdin=stdin)

    return _cli
