"""The end of a pass: count what is left, go round again or complete, and retire old keys.

What is left is counted through the registry of encrypted kinds, so a key is retired, and
its sealed copy destroyed, only when no registered kind holds an item under it.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.chat import counts, kinds
from portal.db import utcnow
from portal.events import emit
from portal.keys import custody
from portal.keys.models import OrgKey
from portal.keys.service import forget_cached_keys, mark_state
from portal.rotation.common import MAX_PASSES, MAX_SOURCE_KEYS, log_event, waiting_for
from portal.rotation.controls import failure_count
from portal.rotation.models import RotationRange, RotationRun
from portal.rotation.progress import progress, settle_figures
from portal.rotation.sources import Sources, log_sources, report_unmovable, sources
from portal.rotation.states import RangeState, RunState


def verify_and_finish(session: Session, run: RotationRun) -> str:
    """Count what is left under every readable key but the target; complete or go round again.

    The count is not limited to the keys the run started from: a key that became readable
    since (restored from a backup) or did not fit in the run's list joins the run for
    another pass. On completion each source key with nothing left under it is retired on its
    own; a key still holding items that could not be moved stays decrypt-only.
    """
    forget_cached_keys()  # key states as they are now, not as this process cached them
    found = sources(session, run.company_id, run.new_key_id)
    wait = found.wait()
    if wait is not None:
        # Items under a key whose service refused or did not answer are not "unmovable":
        # the run stays in verification, which the watchdog tries again until it answers.
        if waiting_for(run.error) is None:
            run.error = wait.note
            log_event(session, run, wait.note)
        return run.state
    if waiting_for(run.error) is not None:
        run.error = None
        log_event(session, run, "The key service answered again; the run goes on")
    old = [k for k in run.old_key_ids.split(",") if k]
    holding = [k for k in found.keys if found.items(k)]
    left = sum(found.items(k) for k in holding)
    failed = failure_count(session, run)
    if left > failed:
        run.passes += 1
        if run.passes > MAX_PASSES:
            run.state, run.finished_at = RunState.FAILED, utcnow()
            run.error = f"{left - failed} items were still under the old keys after verification"
            log_event(session, run, f"Failed: {run.error}")
            settle_figures(session, run)
            emit(
                session,
                Action.ROTATION_FAILED,
                actor="system",
                company_id=run.company_id,
                outcome="failure",
                details={"run_id": str(run.id), "left": left},
            )
            _retire(session, run, old, found)
            return run.state
        _add_sources(session, run, old, holding, found)
        session.execute(
            update(RotationRange)
            .where(RotationRange.run_id == run.id)
            .values(state=RangeState.PENDING, cursor=None, worker=None, enqueued_at=None)
        )
        run.state = RunState.RUNNING
        log_event(session, run, f"Verification found {left - failed} items left; another pass")
        return run.state
    _settle_totals(session, run)
    settle_figures(session, run)
    run.state, run.finished_at = RunState.COMPLETED, utcnow()
    unmovable = sum(found.unmovable.values())
    if failed:
        summary = f"Completed; {failed} items could not be moved"
    elif unmovable:
        summary = "Completed and verified: nothing readable is left under the old keys"
    else:
        summary = "Completed and verified: nothing is left under the old keys"
    log_event(session, run, summary)
    report_unmovable(session, run, found)
    emit(
        session,
        Action.ROTATION_COMPLETED,
        actor="system",
        company_id=run.company_id,
        details={"run_id": str(run.id), "failed": failed, "unmovable": unmovable},
    )
    _retire(session, run, old, found)
    return run.state


def _add_sources(
    session: Session, run: RotationRun, old: list[str], holding: list[str], found: Sources
) -> None:
    """Add to the run the readable keys verification found items under that it did not list."""
    extra = [k for k in holding if k not in old]
    if not extra:
        return
    keys = (holding + [k for k in old if k not in holding])[:MAX_SOURCE_KEYS]
    run.old_key_ids = ",".join(keys)
    for kind in kinds.all_kinds():
        added = sum(found.counts.get(k, {}).get(kind.name, 0) for k in extra if k in keys)
        run.set_total(kind.name, run.total_of(kind.name) + added)
    log_sources(session, run, [k for k in extra if k in keys], found)


def _settle_totals(session: Session, run: RotationRun) -> None:
    """Count as done the items that writes during the run already put under the new key."""
    report = progress(session, run)
    moved = []
    for kind, figures in report.kinds.items():
        by_writes = figures["total"] - figures["done"] - figures["failed"]
        if by_writes <= 0:
            continue
        moved.append(f"{by_writes} {kind}")
        first = session.scalar(
            select(RotationRange)
            .where(RotationRange.run_id == run.id, RotationRange.kind == kind)
            .order_by(RotationRange.seq)
            .limit(1)
        )
        first.done += by_writes
    if moved:
        session.flush()  # the ranges' new counts, before the run's figures are summed
        log_event(
            session,
            run,
            "Already under the new key through writes during the run: " + ", ".join(moved),
        )


def forget_external_keys(provider: str | None) -> None:
    """Drop this process's cached data keys of a key service (a key of it was retired)."""
    client = custody.key_service(provider)
    if client is not None:
        client.forget()


def _still_named(session: Session, run: RotationRun, key_ids: list[str]) -> set[str]:
    """The last check before sealed copies are destroyed: which of these keys does a row
    still name?

    The counters say none (portal/chat/counts.py); destroying a key is the one step that
    cannot be undone, so the data is asked too: one pass per kind over the organisation's
    rows for all the keys at once, in the background job that completes the run. A key
    found means the counters disagree with the data: they are rebuilt, and that key stays
    decrypt-only for the next run.
    """
    if not key_ids:
        return set()
    named: set[str] = set()
    for kind in kinds.all_kinds():
        model = kind.model
        named.update(
            session.scalars(
                select(model.key_id)
                .where(model.company_id == run.company_id, model.key_id.in_(key_ids))
                .distinct()
            )
        )
    if named:
        counts.recount(session, run.company_id)
        log_event(session, run, "The item counters disagreed with the data; recounted")
    return named


def _retire(session: Session, run: RotationRun, old: list[str], found: Sources) -> None:
    """Retire each source key nothing is left under: its sealed copy is destroyed.

    Per key, not all or nothing: a key still holding an item that could not be moved stays
    decrypt-only (the item stays readable if it can be repaired), the others are retired.
    """
    rows = session.scalars(
        select(OrgKey)
        .where(
            OrgKey.company_id == run.company_id,
            OrgKey.key_id.in_(old),
            OrgKey.state == "decrypt_only",
        )
        .order_by(OrgKey.created_at)
    )
    rows = list(rows)
    named = _still_named(session, run, [r.key_id for r in rows if not found.items(r.key_id)])
    for row in rows:
        if row.key_id in named:
            log_event(
                session,
                run,
                f"Old key {row.fingerprint} still holds items the counters had missed; "
                "it stays decrypt-only",
            )
            continue
        kept = found.items(row.key_id)
        if kept:
            log_event(
                session,
                run,
                f"Old key {row.fingerprint} keeps {kept} items that could not be moved; "
                "it stays decrypt-only",
            )
            continue
        row.sealed = None
        mark_state(row, "retired", "system")
        if row.external:
            forget_external_keys(row.custody)
        log_event(session, run, f"Old key {row.fingerprint} retired; its sealed copy destroyed")
        emit(
            session,
            Action.KEY_RETIRED,
            actor="system",
            company_id=run.company_id,
            details={"run_id": str(run.id), "fingerprint": row.fingerprint},
        )
