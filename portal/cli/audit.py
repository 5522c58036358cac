"""``byok-portal audit ...``: check and maintain the audit trail."""

from __future__ import annotations

import json
from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from portal.cli.common import CliError, db, org_or_fail


@click.group(cls=AppGroup)
def audit() -> None:
    """Check and maintain the audit trail."""


def result_json(result: object) -> dict:
    """One chain's verification result as stable JSON keys."""
    return {
        "chain_id": str(result.chain_id),
        "ok": result.ok,
        "checked": result.checked,
        "event_id": result.event_id,
        "seq": result.seq,
        "reason": result.reason,
    }


@audit.command("verify")
@click.option("--org", "org_slug", default=None, help="Only this organisation's chain.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def audit_verify(ctx: click.Context, org_slug: str | None, as_json: bool) -> None:
    """Verify every hash chain; exit non-zero naming the first bad event."""
    from portal.audit.chain import verify_all

    session = db()
    company = org_or_fail(session, org_slug).id if org_slug else None
    key = current_app.extensions.get("audit_signing_key")
    if key is None:
        click.echo("warning: no master key loaded; head signatures are not checked", err=True)
    results = verify_all(session, key, company)
    broken = [r for r in results if not r.ok]
    if as_json:
        summary = {
            "chains": len(results),
            "events": sum(r.checked for r in results),
            "broken": len(broken),
            "signatures_checked": key is not None,
            "results": [result_json(r) for r in results],
        }
        click.echo(json.dumps(summary, indent=2))
        ctx.exit(1 if broken else 0)
    for result in results:
        click.echo(str(result), err=not result.ok)
    click.echo(
        f"{len(results)} chains, {sum(r.checked for r in results)} events, {len(broken)} broken"
    )
    ctx.exit(1 if broken else 0)


@audit.command("prune")
@click.option("--days", type=int, default=None, help="Keep this many days (AUDIT_RETENTION_DAYS).")
def audit_prune(days: int | None) -> None:
    """Delete events older than the retention period, keeping every chain verifiable."""
    from portal.audit.chain import prune
    from portal.db import utcnow

    keep = days if days is not None else current_app.config["AUDIT_RETENTION_DAYS"]
    if keep < 1:
        raise CliError("--days must be at least 1")
    session = db()
    signing_key = current_app.extensions.get("audit_signing_key")
    pruned = prune(session, utcnow() - timedelta(days=keep), signing_key)
    session.commit()
    click.echo(
        f"pruned {sum(pruned.values())} events older than {keep} days from {len(pruned)} chains"
    )
