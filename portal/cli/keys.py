"""``byok-portal key ...``: the wizard's key operations, with its checks and audit events."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.cli import common
from portal.cli.common import ACTOR, CliError, db, org_or_fail, read_secret
from portal.keys.errors import KeyOperationError, audit_refusal
from portal.keys.transaction import key_operation
from portal.models import Organization

Operation = Callable[[Session, Organization], str]


@click.group(cls=AppGroup)
def key() -> None:
    """Manage an organisation's BYOK key (same checks and audit events as the wizard)."""


def key_op(org_slug: str, operation: Operation, audit_as: Action | None = None) -> None:
    """Run a key operation as actor 'cli'; a refusal is audited, committed and exits 1.

    Key operations audit their own refusals; ``audit_as`` records any other refusal (a
    rotation step, a missing confirmation flag) under that action.
    """
    session = db()
    org = org_or_fail(session, org_slug)
    try:
        with key_operation(session):
            try:
                message = operation(session, org)
            except KeyOperationError as exc:
                if audit_as:
                    which = {"field": exc.field} if exc.field else {}
                    audit_refusal(session, org, ACTOR, audit_as, exc, **which)
                raise
    except KeyOperationError as exc:
        raise CliError(str(exc)) from None
    click.echo(message)


def refuse_unconfirmed(org_slug: str, action: Action, message: str) -> None:
    """Refuse (and audit) a step whose confirmation flag was not given."""

    def refuse(_session: Session, _org: Organization) -> str:
        raise KeyOperationError(message, code="not_acknowledged")

    key_op(org_slug, refuse, audit_as=action)


def status_lines(info: dict) -> str:
    """Describe an organisation's key status for people."""
    lines = [
        f"organisation: {info['organization']} ({info['tier']})",
        f"BYOK: {'on' if info['byok_enabled'] else 'off'}"
        + (" (required)" if info["byok_required"] else ""),
        f"active key: {info['active_fingerprint'] or '-'}",
    ]
    if info["rotation_due"]:
        overdue = " OVERDUE" if info["rotation_overdue"] else ""
        lines.append(f"next rotation due: {info['rotation_due'][:10]}{overdue}")
    for k in info["keys"]:
        lines.append(f"  {k['fingerprint']}  {k['state']:<12} {k['origin']:<9} {k['items']} items")
    return "\n".join(lines)


@key.command("status")
@click.option("--org", "org_slug", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_status(org_slug: str, as_json: bool) -> None:
    """Show BYOK state, keys (fingerprint, state, origin) and item counts."""
    from portal.keys.operations import status

    def show(session: Session, org: Organization) -> str:
        info = status(session, org).as_json()
        return json.dumps(info, indent=2) if as_json else status_lines(info)

    key_op(org_slug, show)


@key.command("enable")
@click.option("--org", "org_slug", required=True)
def key_enable(org_slug: str) -> None:
    """Test and enable the base64 key read from standard input (or a hidden prompt)."""
    from portal.keys import operations as ops

    text = read_secret("Key")

    def run(session: Session, org: Organization) -> str:
        fp = ops.test_key(session, org, ACTOR, text)
        row = ops.enable(session, org, ACTOR, text, fp)
        return f"BYOK enabled for {org.slug} with key {row.fingerprint} ({row.origin})"

    key_op(org_slug, run)


@key.command("disable")
@click.option("--org", "org_slug", required=True)
@click.option(
    "--i-understand",
    "understood",
    is_flag=True,
    help="Confirm that compliance and legal were consulted.",
)
def key_disable(org_slug: str, understood: bool) -> None:
    """Switch BYOK off (Organization Community only); new data uses a platform key."""
    from portal.keys import operations as ops

    if not understood:
        refuse_unconfirmed(
            org_slug,
            Action.BYOK_DISABLED,
            "disabling BYOK needs --i-understand (consult compliance and legal first)",
        )
    key_op(
        org_slug,
        lambda session, org: (
            "BYOK disabled; new data uses platform key "
            + ops.disable(session, org, ACTOR, org.slug, True).fingerprint
        ),
    )


@key.command("restore")
@click.option("--org", "org_slug", required=True)
def key_restore(org_slug: str) -> None:
    """Restore a lost or unavailable key from the base64 backup on standard input (or a prompt)."""
    from portal.keys import operations as ops

    text = read_secret("Key backup")

    def run(session: Session, org: Organization) -> str:
        row = ops.restore(session, org, ACTOR, text)
        return f"key {row.fingerprint} restored ({row.state})"

    key_op(org_slug, run)


@key.command("revoke")
@click.option("--org", "org_slug", required=True)
def key_revoke(org_slug: str) -> None:
    """Destroy the active BYOK key's sealed copy until it is restored."""
    from portal.keys import operations as ops

    key_op(
        org_slug,
        lambda session, org: (
            "access revoked for key " + ops.revoke(session, org, ACTOR, org.slug).fingerprint
        ),
    )


@key.command("lost")
@click.option("--org", "org_slug", required=True)
@click.option(
    "--i-understand",
    "understood",
    is_flag=True,
    help="Confirm that items under the key become unreadable.",
)
def key_lost(org_slug: str, understood: bool) -> None:
    """Declare the active BYOK key lost."""
    from portal.keys import operations as ops

    if not understood:
        refuse_unconfirmed(
            org_slug, Action.KEY_DECLARED_LOST, "declaring a key lost needs --i-understand"
        )
    key_op(
        org_slug,
        lambda session, org: (
            "declared lost: key " + ops.declare_lost(session, org, ACTOR, org.slug).fingerprint
        ),
    )


def rotation_keys() -> tuple[str, str]:
    """Read the current and the new key: two hidden prompts, or two lines of standard input."""
    if common.stdin_is_terminal():
        return read_secret("Current key"), read_secret("New key")
    lines = sys.stdin.read().splitlines()
    if len(lines) < 2:
        raise CliError("give the current key and the new key, one per line, on standard input")
    return lines[0], lines[1]


@key.command("rotate")
@click.option("--org", "org_slug", required=True)
def key_rotate(org_slug: str) -> None:
    """Rotate: current key, then new key, one per line on standard input; prints the run id."""
    from portal.rotation.queue import enqueue_ranges
    from portal.rotation.start import start_rotation

    current, new = rotation_keys()
    run_ids: list[str] = []

    def run(session: Session, org: Organization) -> str:
        started = start_rotation(session, org, ACTOR, current, new)
        run_ids.append(str(started.id))
        return str(started.id)

    key_op(org_slug, run, audit_as=Action.ROTATION_STARTED)
    enqueue_ranges(current_app._get_current_object(), uuid.UUID(run_ids[0]))
