"""``byok-portal data ...``: take an organisation's encrypted data out of the portal."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from portal.audit.actions import Action
from portal.cli.common import ACTOR, CliError, db, org_or_fail


@click.group(cls=AppGroup)
def data() -> None:
    """Take an organisation's encrypted data out of the portal."""


@data.command("export")
@click.option("--org", "org_slug", required=True, help="Organisation slug.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="File to write.")
def data_export(org_slug: str, out: str) -> None:
    """Write the organisation's ciphertext and what decrypting it needs (never a key) as
    JSON Lines (docs/format.md, "Data export")."""
    from portal.events import emit
    from portal.keys import export

    session = db()
    org = org_or_fail(session, org_slug)
    emit(session, Action.DATA_EXPORTED, actor=ACTOR, company_id=org.id, details={"version": 1})
    session.commit()  # recorded before a single value leaves, as the Audit Log exports are
    try:
        counts = export.write(session, org, out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    # One count per registered kind, so a kind added later is reported without a change here.
    exported = ", ".join(
        f"{kind.label.lower()} {counts.get(kind.table, 0)}" for kind in export.exported_kinds()
    )
    click.echo(f"exported {org_slug} to {out}: {exported}")
