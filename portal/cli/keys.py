"""``byok-portal key ...``: the wizard's key operations, with its checks and audit events."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.cli import common
from portal.cli import keys_external as external
from portal.cli.common import ACTOR, CliError, db, org_or_fail, read_secret
from portal.keys.custody.keyservice import PROVIDERS
from portal.keys.errors import KeyOperationError, audit_refusal
from portal.keys.transaction import key_operation
from portal.models import Organization

Operation = Callable[[Session, Organization], str]
RunStart = Callable[[Session, Organization], Any]


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
        *external.custody_lines(info),
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
    """Show BYOK state, custody and key service, keys (fingerprint, state, origin), items."""
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


@key.command("connect")
@click.option("--org", "org_slug", required=True)
@click.option("--provider", required=True, type=click.Choice(PROVIDERS), help="Key service.")
@click.option(
    "--key-ref",
    required=True,
    help="Transit key name, PKCS#11 key label or KMS key ARN (a reference, never a secret).",
)
@click.option("--role-arn", help="AWS only: a role to assume (ExternalId = organisation id).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_connect(
    org_slug: str, provider: str, key_ref: str, role_arn: str | None, as_json: bool
) -> None:
    """Test a key in your key service, then enable BYOK with a data key it wraps."""
    key_op(org_slug, external.connect_operation(provider, key_ref, role_arn, as_json))


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


def start_run(org_slug: str, start: RunStart) -> None:
    """Start a run as actor 'cli', print its id and queue its ranges for the workers."""
    from portal.rotation.queue import enqueue_ranges

    run_ids: list[uuid.UUID] = []

    def run(session: Session, org: Organization) -> str:
        started = start(session, org)
        run_ids.append(started.id)
        return str(started.id)

    key_op(org_slug, run, audit_as=Action.ROTATION_STARTED)
    enqueue_ranges(current_app._get_current_object(), run_ids[0])


def reencryption_keys(org_slug: str, to_sealed: bool) -> tuple[str | None, str | None]:
    """Read what a full re-encryption needs: the current key only when it is sealed here."""
    if external.active_is_sealed(org_slug):
        return rotation_keys() if to_sealed else (read_secret("Current key"), None)
    return None, read_secret("New key") if to_sealed else None


@key.command("rotate")
@click.option("--org", "org_slug", required=True)
@click.option(
    "--rewrap",
    is_flag=True,
    help="Re-wrap the stored data keys under the newest version of the key in your key "
    "service (or under --key-ref); no data is re-encrypted.",
)
@click.option(
    "--to-provider",
    type=click.Choice(PROVIDERS),
    help="Full re-encryption onto a new data key wrapped by --key-ref in this key service.",
)
@click.option(
    "--to-sealed",
    is_flag=True,
    help="Full re-encryption onto a new sealed key read like the plain rotation's new key.",
)
@click.option("--key-ref", help="The key in your key service (--rewrap, --to-provider).")
@click.option("--role-arn", help="AWS only: a role to assume with --key-ref.")
def key_rotate(
    org_slug: str,
    rewrap: bool,
    to_provider: str | None,
    to_sealed: bool,
    key_ref: str | None,
    role_arn: str | None,
) -> None:
    """Rotate: current key, then new key, one per line on standard input; prints the run id.

    With --rewrap only the wrapped data keys are rewritten. With --to-provider or
    --to-sealed every item is re-encrypted under a new data key (the current key is read
    first only when it is sealed here); prints the run id.
    """
    from portal.rotation.start import start_rotation

    mode = external.rotate_mode(rewrap, to_provider, to_sealed, key_ref, role_arn)
    if mode == "rewrap":
        key_op(org_slug, external.rewrap_operation(key_ref, role_arn))
        return
    if mode == "reencrypt":
        current, new = reencryption_keys(org_slug, to_sealed)
        start_run(
            org_slug, external.reencryption_start(to_provider, key_ref, role_arn, current, new)
        )
        return
    current, new = rotation_keys()
    start_run(org_slug, lambda session, org: start_rotation(session, org, ACTOR, current, new))
