"""Setting up: the instance, organisations, users, passwords and data-API tokens."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.audit.actions import Action
from portal.cli.common import ACTOR, CliError, db, org_or_fail, read_password
from portal.models import ROLES, TIERS


@click.command()
@with_appcontext
def init() -> None:
    """Create the instance folder and keys, and apply database migrations."""
    from portal.setup import initialise

    for line in initialise(current_app):
        click.echo(line)


@click.command("create-org")
@click.argument("name")
@click.option("--tier", type=click.Choice(TIERS), required=True)
@click.option("--slug", default=None, help="Defaults to the name, lowercased with dashes.")
@with_appcontext
def create_org_cmd(name: str, tier: str, slug: str | None) -> None:
    """Create an organisation; the same one again (slug and tier) is not an error."""
    from sqlalchemy import select

    from portal.models import Organization
    from portal.orgs import OrgError, create_org, slugify

    session = db()
    wanted = slug or slugify(name.strip())
    existing = session.scalar(select(Organization).where(Organization.slug == wanted))
    if existing is not None and existing.tier == tier:
        # Idempotent for automation: a re-run of the same setup script succeeds.
        click.echo(f"organisation {existing.slug} ({existing.tier}) exists already")
        return
    try:
        org = create_org(session, name, tier, slug)
    except OrgError as exc:
        raise CliError(str(exc)) from None
    session.commit()
    click.echo(f"created organisation {org.slug} ({org.tier})")


@click.command("create-user")
@click.argument("email")
@click.option("--org", "org_slug", default=None, help="Organisation slug (not for support).")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def create_user_cmd(email: str, org_slug: str | None, role: str, password_stdin: bool) -> None:
    """Create a user; the password comes from a prompt or standard input."""
    from portal.auth.services import UserError, create_user

    password = read_password(password_stdin, "Password")
    session = db()
    org = org_or_fail(session, org_slug) if org_slug else None
    try:
        user = create_user(session, email, password, role, org)
    except UserError as exc:
        raise CliError(str(exc)) from None
    session.commit()
    click.echo(f"created {user.role} {user.email}")


@click.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def set_password_cmd(email: str, password_stdin: bool) -> None:
    """Change a user's password; the user's existing sessions stop working."""
    from portal.auth.services import UserError, set_password
    from portal.events import emit

    password = read_password(password_stdin, "New password")
    session = db()
    try:
        user = set_password(session, email, password)
    except UserError as exc:
        raise CliError(str(exc)) from None
    emit(
        session,
        Action.PASSWORD_CHANGED,
        actor=ACTOR,
        company_id=user.company_id,
        details={"user": user.email},
    )
    session.commit()
    click.echo(f"password changed for {user.email}; their sessions are signed out")


@click.command("create-token")
@click.option("--org", "org_slug", required=True, help="Organisation slug.")
@click.option("--name", required=True, help="What the token is for.")
@with_appcontext
def create_token_cmd(org_slug: str, name: str) -> None:
    """Create a data-API bearer token; it is printed once, alone on the last line."""
    from portal.chat.service import create_token

    session = db()
    org = org_or_fail(session, org_slug)
    token = create_token(session, org.id, name)
    session.commit()
    click.echo(f"API token {name!r} for {org.slug} (shown once; only its hash is kept):")
    click.echo(token)


COMMANDS = (init, create_org_cmd, create_user_cmd, set_password_cmd, create_token_cmd)
