"""``byok-portal custody ...``: where the installation master key lives, and moving keys to it."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from portal.cli.common import ACTOR, CliError, db

PROVIDERS = ("vault-transit", "pkcs11")


@click.group(cls=AppGroup)
def custody() -> None:
    """Where the installation master key lives (MASTER_KEY_PROVIDER), and moving keys to it."""


@custody.command("migrate")
@click.option(
    "--to",
    "provider",
    type=click.Choice(PROVIDERS),
    default=None,
    help="The master key service to re-seal under (default: MASTER_KEY_PROVIDER).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def custody_migrate(provider: str | None, as_json: bool) -> None:
    """Re-seal every key sealed by the master key file under the master key service."""
    from portal.keys.custody_migrate import (
        MigrationRefused,
        migrate,
        record_refused_migration,
        target_name,
    )

    session = db()
    name = target_name(provider or current_app.config.get("MASTER_KEY_PROVIDER") or "file")
    try:
        result = migrate(session, ACTOR, name)
    except MigrationRefused as exc:
        session.rollback()
        record_refused_migration(session, ACTOR, name, exc)
        session.commit()
        raise CliError(str(exc)) from None
    session.commit()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"re-sealed {result['resealed']} keys of {result['organizations']} organisations "
        f"from {result['from']} to {result['to']} ({result['master_key']}); "
        f"{result['skipped']} without a sealed copy left as they are"
    )
    click.echo(f"audit signing key: {result['audit_signing_key']}")
    if result["unreadable"]:
        click.echo(
            f"warning: {len(result['unreadable'])} keys could not be unsealed with the master key "
            f"file and stay sealed by it: {', '.join(result['unreadable'])}",
            err=True,
        )
    else:
        click.echo(
            "no key needs the master key file now: remove it from the servers, and keep a copy "
            "offline for as long as you keep database backups from before this migration"
        )


@custody.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def custody_status(as_json: bool) -> None:
    """Show where the master key lives and how many keys each custody backend seals."""
    from portal.keys.custody_migrate import status

    info = status(db())
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    service = info["master_key_service"]
    audit = info["audit_signing_key"]
    lines = [
        f"master key: {info['master_key']}",
        f"new keys sealed by: {info['sealing_backend'] or '-'}",
        f"running backends: {', '.join(info['running_backends']) or '-'}",
    ]
    if service is not None:
        lines.append(
            f"master key service: {service['state']}"
            + (f" ({service['last_error']})" if service.get("last_error") else "")
        )
    lines.append(
        f"audit signing key: {audit['source']}, "
        + ("loaded" if audit["loaded"] else f"NOT loaded ({audit['problem'] or 'no master key'})")
    )
    lines += [f"  {name}: {count} keys" for name, count in info["sealed_keys"].items()]
    if info["awaiting_migration"]:
        lines.append(
            f"{info['awaiting_migration']} keys are still sealed by the master key file: "
            "run `byok-portal custody migrate`"
        )
    click.echo("\n".join(lines))
