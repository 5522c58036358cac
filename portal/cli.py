"""The ``byok-portal`` command: set up, administer and run the portal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask

from portal.models import ROLES, TIERS


@contextmanager
def app_session() -> Iterator[tuple[Flask, object]]:
    """Create the app and yield it with a database session inside its context."""
    from portal import create_app
    from portal.db import get_session

    app = create_app()
    with app.app_context():
        yield app, get_session()


def fail(message: str) -> None:
    """Print a refusal on standard error and exit non-zero."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """byok-portal: bring-your-own-key encryption key management."""


@main.command()
def init() -> None:
    """Create the instance folder and keys, and apply database migrations."""
    from portal.setup import initialise

    with app_session() as (app, _db):
        for line in initialise(app):
            click.echo(line)


@main.command("create-org")
@click.argument("name")
@click.option("--tier", type=click.Choice(TIERS), required=True)
@click.option("--slug", default=None, help="Defaults to the name, lowercased with dashes.")
def create_org_cmd(name: str, tier: str, slug: str | None) -> None:
    """Create an organisation."""
    from portal.orgs import OrgError, create_org

    with app_session() as (_app, db):
        try:
            org = create_org(db, name, tier, slug)
        except OrgError as exc:
            fail(str(exc))
        db.commit()
        click.echo(f"created organisation {org.slug} ({org.tier})")


@main.command("create-user")
@click.argument("email")
@click.option("--org", "org_slug", default=None, help="Organisation slug (not for support).")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create_user_cmd(email: str, org_slug: str | None, role: str, password_stdin: bool) -> None:
    """Create a user; the password comes from a prompt or standard input."""
    from portal.auth.services import UserError, create_user
    from portal.orgs import OrgError, get_org

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with app_session() as (_app, db):
        try:
            org = get_org(db, org_slug) if org_slug else None
            user = create_user(db, email, password, role, org)
        except (UserError, OrgError) as exc:
            fail(str(exc))
        db.commit()
        click.echo(f"created {user.role} {user.email}")


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option("--workers", type=int, default=None, help="Defaults to 2 x CPUs + 1.")
def serve(bind: str, workers: int | None) -> None:
    """Serve the portal with gunicorn."""
    from portal.serving import run_gunicorn

    run_gunicorn(bind, workers or (2 * (os.cpu_count() or 1) + 1))


@main.command()
@click.option("--count", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def worker(count: int, burst: bool) -> None:
    """Run RQ workers on REDIS_URL."""
    from portal.serving import run_workers

    run_workers(count, burst)


@main.command()
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def demo(port: int, host: str) -> None:
    """Set up demo organisations and users, then serve the portal with a worker."""
    from portal.demo import run_demo

    run_demo(host, port)


@main.command("create-token")
@click.option("--org", "org_slug", required=True, help="Organisation slug.")
@click.option("--name", required=True, help="What the token is for.")
def create_token_cmd(org_slug: str, name: str) -> None:
    """Create a data-API bearer token; it is printed once, alone on the last line."""
    from portal.chat.service import create_token
    from portal.orgs import OrgError, get_org

    with app_session() as (_app, db):
        try:
            org = get_org(db, org_slug)
        except OrgError as exc:
            fail(str(exc))
        token = create_token(db, org.id, name)
        db.commit()
        click.echo(f"API token {name!r} for {org.slug} (shown once; only its hash is kept):")
        click.echo(token)


if __name__ == "__main__":
    main()
