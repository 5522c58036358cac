"""What every command shares: its refusal, the app's session, an organisation, a key."""

from __future__ import annotations

import sys

import click
from sqlalchemy.orm import Session

from portal.models import Organization

ACTOR = "cli"


class CliError(click.ClickException):
    """A refusal: exit 1 with ``error: message`` on standard error."""

    def show(self, file: object = None) -> None:
        """Print the message the way the command always has (``error: ...``)."""
        click.echo(f"error: {self.format_message()}", err=True)


def db() -> Session:
    """Return the database session of the command's app context."""
    from portal.db import get_session

    return get_session()


def org_or_fail(session: Session, slug: str) -> Organization:
    """Return the organisation with this slug, or refuse naming the slug."""
    from portal.orgs import OrgError, get_org

    try:
        return get_org(session, slug)
    except OrgError as exc:
        raise CliError(str(exc)) from None


def stdin_is_terminal() -> bool:
    """Tell whether standard input is a terminal (someone typing) rather than a pipe."""
    return sys.stdin.isatty()


def read_secret(prompt: str) -> str:
    """Read a secret: a hidden prompt on a terminal, else standard input (never an argument)."""
    if stdin_is_terminal():
        return click.prompt(prompt, hide_input=True, prompt_suffix=": ", err=True)
    return sys.stdin.read()


def read_password(password_stdin: bool, prompt: str) -> str:
    """Read a password from one line of standard input or a confirmed hidden prompt."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)
