"""The ``byok-portal`` command: set up, administer and run the portal."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask

from portal.demo import DEFAULT_ITEMS as DEMO_ITEMS
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


@main.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def set_password_cmd(email: str, password_stdin: bool) -> None:
    """Change a user's password; the user's existing sessions stop working."""
    from portal.auth.services import UserError, set_password
    from portal.events import emit

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    with app_session() as (_app, db):
        try:
            user = set_password(db, email, password)
        except UserError as exc:
            fail(str(exc))
        emit(
            db,
            "auth.password_changed",
            actor="cli",
            company_id=user.company_id,
            details={"user": user.email},
        )
        db.commit()
        click.echo(f"password changed for {user.email}; their sessions are signed out")


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
@click.option(
    "--items",
    type=click.IntRange(0, 1_000_000),
    default=DEMO_ITEMS,
    show_default=True,
    help="Items seeded for Acme Org Community, which can switch BYOK on with data in place, "
    "when it is created (the default keeps a rotation's progress on screen for about 20 s).",
)
def demo(port: int, host: str, items: int) -> None:
    """Set up demo organisations and users, then serve the portal with a worker."""
    from portal.demo import run_demo

    run_demo(host, port, items)


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


@main.group()
def key() -> None:
    """Manage an organisation's BYOK key (same checks and audit events as the wizard)."""


def _key_op(org_slug: str, operation, audit_as: str | None = None) -> None:
    """Run a key operation as actor 'cli', committing on success, exiting 1 when refused.

    Key operations audit their own refusals; ``audit_as`` records any other refusal (a
    rotation step, a missing confirmation flag) under that action.
    """
    from portal.keys.operations import KeyOperationError, audit_refusal
    from portal.orgs import OrgError, get_org

    with app_session() as (_app, db):
        org = None
        try:
            org = get_org(db, org_slug)
            message = operation(db, org)
        except (KeyOperationError, OrgError) as exc:
            if audit_as and isinstance(exc, KeyOperationError):
                which = {"field": exc.field} if exc.field else {}
                audit_refusal(db, org, "cli", audit_as, exc, **which)
            db.commit()  # refused attempts are audited too
            fail(str(exc))
        db.commit()
        click.echo(message)


def _refuse_unconfirmed(org_slug: str, action: str, message: str) -> None:
    """Refuse (and audit) a step whose confirmation flag was not given."""
    from portal.keys.operations import KeyOperationError

    def refuse(_db, _org) -> str:
        raise KeyOperationError(message, code="not_acknowledged")

    _key_op(org_slug, refuse, audit_as=action)


@key.command("status")
@click.option("--org", "org_slug", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_status(org_slug: str, as_json: bool) -> None:
    """Show BYOK state, keys (fingerprint, state, origin) and item counts."""
    import json

    from portal.keys.operations import status

    def show(db, org) -> str:
        info = status(db, org).as_json()
        if as_json:
            return json.dumps(info, indent=2)
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
            lines.append(
                f"  {k['fingerprint']}  {k['state']:<12} {k['origin']:<9} {k['items']} items"
            )
        return "\n".join(lines)

    _key_op(org_slug, show)


def _stdin_key() -> str:
    """Read a base64 key from standard input (never from an argument: it would be in ps)."""
    return sys.stdin.read()


@key.command("enable")
@click.option("--org", "org_slug", required=True)
def key_enable(org_slug: str) -> None:
    """Test and enable the base64 key read from standard input."""
    from portal.keys import operations as ops

    text = _stdin_key()

    def run(db, org) -> str:
        fp = ops.test_key(db, org, "cli", text)
        row = ops.enable(db, org, "cli", text, fp)
        return f"BYOK enabled for {org.slug} with key {row.fingerprint} ({row.origin})"

    _key_op(org_slug, run)


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
        _refuse_unconfirmed(
            org_slug,
            "BYOK.disabled",
            "disabling BYOK needs --i-understand (consult compliance and legal first)",
        )
    _key_op(
        org_slug,
        lambda db, org: (
            "BYOK disabled; new data uses platform key "
            + ops.disable(db, org, "cli", org.slug, True).fingerprint
        ),
    )


@key.command("restore")
@click.option("--org", "org_slug", required=True)
def key_restore(org_slug: str) -> None:
    """Restore a lost or unavailable key from the base64 backup read from standard input."""
    from portal.keys import operations as ops

    text = _stdin_key()

    def run(db, org) -> str:
        row = ops.restore(db, org, "cli", text)
        return f"key {row.fingerprint} restored ({row.state})"

    _key_op(org_slug, run)


@key.command("revoke")
@click.option("--org", "org_slug", required=True)
def key_revoke(org_slug: str) -> None:
    """Destroy the active BYOK key's sealed copy until it is restored."""
    from portal.keys import operations as ops

    _key_op(
        org_slug,
        lambda db, org: (
            "access revoked for key " + ops.revoke(db, org, "cli", org.slug).fingerprint
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
        _refuse_unconfirmed(
            org_slug, "encryption_key.declared_lost", "declaring a key lost needs --i-understand"
        )
    _key_op(
        org_slug,
        lambda db, org: (
            "declared lost: key " + ops.declare_lost(db, org, "cli", org.slug).fingerprint
        ),
    )


@key.command("rotate")
@click.option("--org", "org_slug", required=True)
def key_rotate(org_slug: str) -> None:
    """Rotate: current key, then new key, one per line on standard input; prints the run id."""
    from jobs.rotation import enqueue_ranges
    from portal.rotation import service as rotation

    lines = sys.stdin.read().splitlines()
    if len(lines) < 2:
        fail("give the current key and the new key, one per line, on standard input")
    run_ids: list[str] = []

    def run(db, org) -> str:
        started = rotation.start_rotation(db, org, "cli", lines[0], lines[1])
        run_ids.append(str(started.id))
        return str(started.id)

    _key_op(org_slug, run, audit_as="BYOK.rotation_started")
    from portal import create_app

    app = create_app()
    enqueue_ranges(app, uuid.UUID(run_ids[0]))


@main.group()
def rotation() -> None:
    """Watch and steer rotation runs."""


def _run_op(run_id: str, operation) -> None:
    """Load a run and apply an operation; refusals exit 1 with the message on stderr."""
    from portal.rotation.models import RotationRun
    from portal.rotation.service import RotationError

    try:
        key = uuid.UUID(run_id)
    except ValueError:
        fail(f"not a run id: {run_id}")
    with app_session() as (app, db):
        run = db.get(RotationRun, key)
        if run is None:
            fail(f"no rotation run {run_id}")
        try:
            message = operation(app, db, run)
        except RotationError as exc:
            fail(str(exc))
        db.commit()
        click.echo(message)


@rotation.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def rotation_status(run_id: str, as_json: bool) -> None:
    """Show a run's state and progress per kind."""
    import json

    from portal.rotation.service import progress

    def show(_app, db, run) -> str:
        info = progress(db, run).as_json()
        if as_json:
            return json.dumps(info, indent=2)
        lines = [f"run {info['id']} ({info['kind']}): {info['state']}, {info['percent']}%"]
        for kind in ("messages", "attachments", "metadata"):
            k = info[kind]
            lines.append(f"  {kind:<12} {k['done']}/{k['total']} done, {k['failed']} failed")
        return "\n".join(lines)

    _run_op(run_id, show)


@rotation.command("resume")
@click.argument("run_id")
def rotation_resume(run_id: str) -> None:
    """Resume a paused, failed or cancelled run, or re-queue a running one from the database."""
    from jobs.rotation import enqueue_ranges
    from portal.rotation.service import control

    def resume(app, db, run) -> str:
        if run.state in ("paused", "failed", "cancelled"):  # refusals explain themselves
            control(db, run, "resume", "cli")
            db.commit()
        elif run.state not in ("running", "verifying"):
            fail(f"run {run.id} is {run.state}; nothing to resume")
        queued = enqueue_ranges(app, run.id, everything=True)
        return f"run {run.id} is {run.state}; {queued} ranges queued"

    _run_op(run_id, resume)


@rotation.command("pause")
@click.argument("run_id")
def rotation_pause(run_id: str) -> None:
    """Pause a run; workers stop after their current batch."""
    from portal.rotation.service import control

    _run_op(run_id, lambda _app, db, run: f"run {control(db, run, 'pause', 'cli').id} paused")


@rotation.command("cancel")
@click.argument("run_id")
def rotation_cancel(run_id: str) -> None:
    """Cancel a run; every item stays readable under whichever key it has."""
    from portal.rotation.service import control

    _run_op(run_id, lambda _app, db, run: f"run {control(db, run, 'cancel', 'cli').id} cancelled")


# ignore_unknown_options: a negative N reaches the service's own refusal, not click's.
@rotation.command("throttle", context_settings={"ignore_unknown_options": True})
@click.argument("run_id")
@click.argument("per_second", metavar="N")
def rotation_throttle(run_id: str, per_second: str) -> None:
    """Limit each worker of a run to N batches per second (0 or none: unlimited); audited."""
    from portal.rotation.service import set_throttle

    text = per_second.strip().lower()
    try:
        value = None if text == "none" else float(text) or None
    except ValueError:
        fail(f"the throttle must be a number of batches per second, 0 or none: {per_second!r}")

    def throttle(_app, db, run) -> str:
        set_throttle(db, run, value, "cli")
        limit = f"{value:g} batches per second" if value else "unlimited"
        return f"run {run.id} throttle: {limit}"

    _run_op(run_id, throttle)


@rotation.command("list")
@click.option("--org", "org_slug", default=None)
def rotation_list(org_slug: str | None) -> None:
    """List rotation runs, newest first."""
    from sqlalchemy import select

    from portal.orgs import OrgError, get_org
    from portal.rotation.models import RotationRun
    from portal.rotation.service import progress

    with app_session() as (_app, db):
        query = select(RotationRun).order_by(RotationRun.created_at.desc())
        if org_slug:
            try:
                query = query.where(RotationRun.company_id == get_org(db, org_slug).id)
            except OrgError as exc:
                fail(str(exc))
        for run in db.scalars(query):
            p = progress(db, run)
            click.echo(
                f"{run.id}  {run.kind:<16} {run.state:<10} {p.percent():>3}%  "
                f"{p.done}/{p.total}  {run.created_at:%Y-%m-%d %H:%M}"
            )


@main.group()
def audit() -> None:
    """Check and maintain the audit trail."""


@audit.command("verify")
@click.option("--org", "org_slug", default=None, help="Only this organisation's chain.")
def audit_verify(org_slug: str | None) -> None:
    """Verify every hash chain; exit non-zero naming the first bad event."""
    from portal.audit.chain import verify_all
    from portal.orgs import OrgError, get_org

    with app_session() as (app, db):
        try:
            company = get_org(db, org_slug).id if org_slug else None
        except OrgError as exc:
            fail(str(exc))
        key = app.extensions.get("audit_signing_key")
        if key is None:
            click.echo("warning: no master key loaded; head signatures are not checked", err=True)
        results = verify_all(db, key, company)
    broken = [r for r in results if not r.ok]
    for result in results:
        click.echo(str(result), err=not result.ok)
    click.echo(
        f"{len(results)} chains, {sum(r.checked for r in results)} events, {len(broken)} broken"
    )
    sys.exit(1 if broken else 0)


@audit.command("prune")
@click.option("--days", type=int, default=None, help="Keep this many days (AUDIT_RETENTION_DAYS).")
def audit_prune(days: int | None) -> None:
    """Delete events older than the retention period, keeping every chain verifiable."""
    from datetime import timedelta

    from portal.audit.chain import prune
    from portal.db import utcnow

    with app_session() as (app, db):
        keep = days if days is not None else app.config["AUDIT_RETENTION_DAYS"]
        if keep < 1:
            fail("--days must be at least 1")
        pruned = prune(db, utcnow() - timedelta(days=keep), app.extensions.get("audit_signing_key"))
        db.commit()
    click.echo(
        f"pruned {sum(pruned.values())} events older than {keep} days from {len(pruned)} chains"
    )


@main.group()
def data() -> None:
    """Take an organisation's encrypted data out of the portal."""


@data.command("export")
@click.option("--org", "org_slug", required=True, help="Organisation slug.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="File to write.")
def data_export(org_slug: str, out: str) -> None:
    """Write the organisation's ciphertext and what decrypting it needs (never a key) as
    JSON Lines (docs/format.md, "Data export")."""
    from portal.chat import export
    from portal.events import emit
    from portal.orgs import OrgError, get_org

    with app_session() as (_app, db):
        try:
            org = get_org(db, org_slug)
        except OrgError as exc:
            fail(str(exc))
        emit(db, "BYOK.data_exported", actor="cli", company_id=org.id, details={"version": 1})
        db.commit()  # recorded before a single value leaves, as the Audit Log exports are
        try:
            counts = export.write(db, org, out)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
    click.echo(
        f"exported {counts['conversations']} conversations, {counts['messages']} messages and "
        f"{counts['attachments']} attachments of {org_slug} to {out}"
    )


if __name__ == "__main__":
    main()
