"""``byok-portal rotation ...``: watch and steer rotation runs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy.orm import Session

from portal.cli.common import ACTOR, CliError, db, org_or_fail
from portal.rotation.models import RotationRun
from portal.rotation.states import RunState

RunOperation = Callable[[Flask, Session, RotationRun], str]


@click.group(cls=AppGroup)
def rotation() -> None:
    """Watch and steer rotation runs."""


def run_op(run_id: str, operation: RunOperation) -> None:
    """Load a run and apply an operation; refusals exit 1 with the message on stderr."""
    from portal.rotation.common import RotationError

    try:
        key = uuid.UUID(run_id)
    except ValueError:
        raise CliError(f"not a run id: {run_id}") from None
    session = db()
    run = session.get(RotationRun, key)
    if run is None:
        raise CliError(f"no rotation run {run_id}")
    try:
        message = operation(current_app._get_current_object(), session, run)
    except RotationError as exc:
        raise CliError(str(exc)) from None
    session.commit()
    click.echo(message)


@rotation.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def rotation_status(run_id: str, as_json: bool) -> None:
    """Show a run's state and progress per kind."""
    from portal.rotation.progress import progress

    def show(_app: Flask, session: Session, run: RotationRun) -> str:
        figures = progress(session, run)
        info = figures.as_json()
        if as_json:
            return json.dumps(info, indent=2)
        lines = [f"run {info['id']} ({info['kind']}): {info['state']}, {info['percent']}%"]
        for kind in figures.kinds:
            k = info[kind]
            lines.append(f"  {kind:<12} {k['done']}/{k['total']} done, {k['failed']} failed")
        return "\n".join(lines)

    run_op(run_id, show)


@rotation.command("resume")
@click.argument("run_id")
def rotation_resume(run_id: str) -> None:
    """Resume a paused, failed or cancelled run, or re-queue a running one from the database."""
    from portal.rotation.controls import control
    from portal.rotation.queue import enqueue_ranges

    def resume(app: Flask, session: Session, run: RotationRun) -> str:
        if run.state in (RunState.PAUSED, RunState.FAILED, RunState.CANCELLED):
            control(session, run, "resume", ACTOR)  # refusals explain themselves
            session.commit()
        elif run.state not in (RunState.RUNNING, RunState.VERIFYING):
            raise CliError(f"run {run.id} is {run.state}; nothing to resume")
        queued = enqueue_ranges(app, run.id, everything=True)
        return f"run {run.id} is {run.state}; {queued} ranges queued"

    run_op(run_id, resume)


@rotation.command("pause")
@click.argument("run_id")
def rotation_pause(run_id: str) -> None:
    """Pause a run; workers stop after their current batch."""
    from portal.rotation.controls import control

    run_op(run_id, lambda _app, s, run: f"run {control(s, run, 'pause', ACTOR).id} paused")


@rotation.command("cancel")
@click.argument("run_id")
def rotation_cancel(run_id: str) -> None:
    """Cancel a run; every item stays readable under whichever key it has."""
    from portal.rotation.controls import control

    run_op(run_id, lambda _app, s, run: f"run {control(s, run, 'cancel', ACTOR).id} cancelled")


# ignore_unknown_options: a negative N reaches the service's own refusal, not click's.
@rotation.command("throttle", context_settings={"ignore_unknown_options": True})
@click.argument("run_id")
@click.argument("per_second", metavar="N")
def rotation_throttle(run_id: str, per_second: str) -> None:
    """Limit each worker of a run to N batches per second (0 or none: unlimited); audited."""
    from portal.rotation.controls import set_throttle

    text = per_second.strip().lower()
    try:
        value = None if text == "none" else float(text) or None
    except ValueError:
        raise CliError(
            f"the throttle must be a number of batches per second, 0 or none: {per_second!r}"
        ) from None

    def throttle(_app: Flask, session: Session, run: RotationRun) -> str:
        set_throttle(session, run, value, ACTOR)
        limit = f"{value:g} batches per second" if value else "unlimited"
        return f"run {run.id} throttle: {limit}"

    run_op(run_id, throttle)


def run_summary(run: RotationRun, session: Session) -> dict:
    """One run as stable JSON keys (ids, states and counts; never key material)."""
    from portal.rotation.progress import progress

    figures = progress(session, run)
    return {
        "id": str(run.id),
        "organization_id": str(run.company_id),
        "kind": run.kind,
        "state": str(run.state),
        "percent": figures.percent(),
        "done": figures.done,
        "failed": figures.failed,
        "total": figures.total,
        "created_at": run.created_at.isoformat(),
    }


@rotation.command("list")
@click.option("--org", "org_slug", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def rotation_list(org_slug: str | None, as_json: bool) -> None:
    """List rotation runs, newest first."""
    from sqlalchemy import select

    session = db()
    query = select(RotationRun).order_by(RotationRun.created_at.desc())
    if org_slug:
        query = query.where(RotationRun.company_id == org_or_fail(session, org_slug).id)
    runs = [run_summary(run, session) for run in session.scalars(query)]
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    for r in runs:
        click.echo(
            f"{r['id']}  {r['kind']:<16} {r['state']:<10} {r['percent']:>3}%  "
            f"{r['done']}/{r['total']}  {r['created_at'][:16].replace('T', ' ')}"
        )
