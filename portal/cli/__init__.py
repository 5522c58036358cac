"""The ``byok-portal`` command: set up, administer and run the portal.

One module per area; the main group is Flask's, so ``routes`` and ``shell`` come with it and
every command runs inside the app built by ``create_app`` from the environment.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click
from flask import Flask
from flask.cli import FlaskGroup

from portal.cli import audit, custody, data, keys, orgs, rotation, run


def _create_app() -> Flask:
    """Build the app from the environment (imported late: ``--help`` stays cheap)."""
    from portal import create_app

    return create_app()


def _version() -> str:
    """The installed byok-portal version."""
    try:
        return version("byok-portal")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


@click.group(
    cls=FlaskGroup,
    create_app=_create_app,
    add_version_option=False,
    load_dotenv=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(_version(), prog_name="byok-portal", message="%(prog)s %(version)s")
def main() -> None:
    """byok-portal: bring-your-own-key encryption key management."""


# ``serve`` runs gunicorn; Werkzeug's development server (and its debugger) is not offered.
main.commands.pop("run", None)
for command in (*orgs.COMMANDS, *run.COMMANDS):
    main.add_command(command)
for group in (keys.key, rotation.rotation, audit.audit, data.data, custody.custody):
    main.add_command(group)

__all__ = ["main"]
