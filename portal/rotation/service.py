"""Rotation runs: starting, planning ranges, controls, verification and progress."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from portal import crypto
from portal.db import utcnow
from portal.events import emit
from portal.keys import operations as ops
from portal.keys import policy
from portal.keys.models import OrgKey
from portal.keys.runs import run_in_progress
from portal.keys.service import forget_cached_keys, load_keys, mark_state, store_key
from portal.models import Organization
from portal.rotation.models import (
    ACTIVE_RUN_STATES,
    DATA_KINDS,
    RotationEvent,
    RotationFailure,
    RotationRange,
    RotationRun,
)

ITEMS_PER_RANGE = 25_000
BYTES_PER_RANGE = 64 * 1024 * 1024
MAX_RANGES = 32
MAX_PASSES = 3
# How many stored items the current key is tried on before a rotation starts.
DECRYPT_SAMPLE = 5
# rotation_runs.old_key_ids holds 400 characters: 23 hex key ids with their commas. Keys
# past that (never seen in practice) are picked up by verification once others empty.
MAX_SOURCE_KEYS = 400 // 17


class RotationError(ops.KeyOperationError):
    """A rotation step was refused; the message says why."""


def log_event(session: Session, run: RotationRun, message: str) -> None:
    """Add a line to the run's own history (shown to support staff: steps, never people)."""
    session.add(RotationEvent(run_id=run.id, message=message))


def check_keys(
    session: Session, org: Organization, current_text: str, new_text: str
) -> tuple[bytes, bytes]:
    """Test Keys: prove the current key, and check the new one is valid and never used."""
    current = ops.read_key(current_text, field="current_key")
    new = ops.read_key(new_text, field="new_key")
    active = policy.active_key(session, org.id)
    if active is None or active.origin == "platform":
        raise RotationError("BYOK is not enabled: there is no key of yours to rotate.")
    if crypto.key_id(current).hex() != active.key_id:
        raise RotationError(
            f"This is not the active key (its fingerprint is {active.fingerprint}).",
            field="current_key",
            code="not_active",
        )
    _decrypt_sample(session, org, current)
    if new == current:
        raise RotationError(
            "The new key must differ from the current key.", field="new_key", code="same_key"
        )
    if session.scalar(
        select(OrgKey.id).where(
            OrgKey.company_id == org.id, OrgKey.key_id == crypto.key_id(new).hex()
        )
    ):
        raise RotationError(
            "This key was used by your organisation before; use a new key.",
            field="new_key",
            code="reused",
        )
    if not crypto.self_test(new):
        raise RotationError("The new key failed the encrypt/decrypt test.", field="new_key")
    return current, new


def _decrypt_sample(session: Session, org: Organization, key: bytes) -> None:
    """Check the pasted current key against a few stored items that name it.

    One item that decrypts proves the key. A damaged item must not block a rotation (the
    rotation lists it as failed and leaves it untouched), so the key is refused only when
    none of the sample decrypts.
    """
    from portal.chat.models import Message
    from portal.chat.service import ad

    kid = crypto.key_id(key).hex()
    sample = session.execute(
        select(Message.id, Message.body_ct)
        .where(Message.company_id == org.id, Message.key_id == kid)
        .order_by(Message.id)
        .limit(DECRYPT_SAMPLE)
    ).all()
    ring = crypto.Keyring(key)
    for row in sample:
        try:
            ring.decrypt(row.body_ct, ad(org.id, "messages", "body", row.id))
            return
        except crypto.DecryptionError:
            continue
    if sample:
        raise RotationError(
            "The current key does not decrypt a stored item.",
            field="current_key",
            code="sample_failed",
        )


def count_items(session: Session, company_id: uuid.UUID, key_ids: list[str]) -> dict[str, int]:
    """Count items per kind under the given keys (indexed by company_id, key_id)."""
    from portal.keys.operations import DATA_TABLES

    out = {}
    for kind, model in DATA_TABLES:
        out[kind] = (
            session.scalar(
                select(func.count())
                .select_from(model)
                .where(model.company_id == company_id, model.key_id.in_(key_ids))
            )
            or 0
        )
    return out


@dataclass
class Sources:
    """The keys a run to a target key moves items from, and the items nobody can move.

    Every key but the target is a source, whatever put items under it: the key active when
    the run started, an older key a cancelled run left behind, platform keys, a BYOK key
    from before a Disable and re-Enable, a key restored from a backup. Only keys that can
    still decrypt are moved from; items under a lost, unavailable or retired key are counted
    and reported, and left exactly as they are.
    """

    keys: list[str]  # hex ids of the readable keys, most items first
    counts: dict[str, dict[str, int]]  # items per kind under every non-target key
    states: dict[str, str]  # the effective state of every key of the organisation
    unmovable: dict[str, int] = field(default_factory=dict)  # key id -> items it holds

    def items(self, key_id: str) -> int:
        """Items under one key, all kinds together."""
        return sum(self.counts.get(key_id, {}).values())


def sources(session: Session, company_id: uuid.UUID, target: str) -> Sources:
    """Find every key whose items a run to ``target`` must move (from the key_id indexes)."""
    loaded = load_keys(session, company_id)
    states = {row.key_id: loaded.effective_state(row) for row in loaded.rows}
    others = [k for k in states if k != target]
    counts = _counts_by_key(session, company_id, others) if others else {}
    readable = [k for k in others if states[k] == "decrypt_only"]
    readable.sort(key=lambda k: -sum(counts.get(k, {}).values()))  # stable: oldest first
    found = Sources(readable, counts, states)
    found.unmovable = {k: found.items(k) for k in others if k not in readable and found.items(k)}
    return found


def _counts_by_key(
    session: Session, company_id: uuid.UUID, key_ids: list[str]
) -> dict[str, dict[str, int]]:
    """Items per key and kind under the given keys (indexed by company_id, key_id)."""
    from portal.keys.operations import DATA_TABLES

    out: dict[str, dict[str, int]] = {}
    for kind, model in DATA_TABLES:
        rows = session.execute(
            select(model.key_id, func.count())
            .where(model.company_id == company_id, model.key_id.in_(key_ids))
            .group_by(model.key_id)
        )
        for key_id, n in rows:
            out.setdefault(key_id, {k: 0 for k in DATA_KINDS})[kind] = n
    return out


def _source_list(found: Sources, first: str | None = None) -> list[str]:
    """The key ids a run records as its sources (the one it must retire first, if given)."""
    keys = ([first] if first else []) + [k for k in found.keys if k != first]
    return keys[:MAX_SOURCE_KEYS]


def _report_unmovable(session: Session, run: RotationRun, found: Sources) -> int:
    """Note in the run's history each key whose items cannot be moved; return how many."""
    for key_id, n in found.unmovable.items():
        state = found.states.get(key_id, "unknown")
        log_event(
            session,
            run,
            f"{n} items under key {crypto.fingerprint(bytes.fromhex(key_id))} ({state}) cannot "
            "be moved: no usable copy of that key can decrypt them; they are left as they are",
        )
    return sum(found.unmovable.values())


def _fingerprints(key_ids: list[str]) -> list[str]:
    """Fingerprints of hex key ids, as people see them."""
    return [crypto.fingerprint(bytes.fromhex(k)) for k in key_ids if k]


def _attachment_bytes(session: Session, run: RotationRun) -> int:
    """Bytes of attachment content the run will move (attachments are split by size too)."""
    from portal.chat.models import Attachment

    total = session.scalar(
        select(func.coalesce(func.sum(Attachment.size), 0)).where(
            Attachment.company_id == run.company_id,
            Attachment.key_id.in_(run.old_key_ids.split(",")),
        )
    )
    return int(total or 0)  # PostgreSQL's SUM of bigint is a numeric (Decimal)


def plan_ranges(session: Session, run: RotationRun) -> None:
    """Split each kind's work into primary-key ranges that workers can take in parallel."""
    for kind in DATA_KINDS:
        total = getattr(run, f"{kind}_total")
        parts = -(-total // ITEMS_PER_RANGE)
        if kind == "attachments":
            parts = max(parts, -(-_attachment_bytes(session, run) // BYTES_PER_RANGE))
        parts = max(1, min(MAX_RANGES, parts))
        step = (1 << 128) // parts
        for seq in range(parts):
            lo = uuid.UUID(int=seq * step) if seq else None
            hi = uuid.UUID(int=(seq + 1) * step) if seq < parts - 1 else None
            session.add(RotationRange(run_id=run.id, kind=kind, seq=seq, lo=lo, hi=hi))
    session.flush()


def _new_run(
    session: Session, org: Organization, actor: Any, kind: str, old: list[str], new: str
) -> RotationRun:
    """Create a run with its totals and ranges."""
    totals = count_items(session, org.id, old)
    run = RotationRun(
        company_id=org.id,
        kind=kind,
        old_key_ids=",".join(old),
        new_key_id=new,
        state="running",
        started_by=ops.actor_label(actor),
        started_at=utcnow(),
        messages_total=totals["messages"],
        attachments_total=totals["attachments"],
        metadata_total=totals["metadata"],
    )
    session.add(run)
    session.flush()
    plan_ranges(session, run)
    return run


def start_rotation(
    session: Session,
    org: Organization,
    actor: Any,
    current_text: str,
    new_text: str,
    generated_fingerprint: str | None = None,
) -> RotationRun:
    """Start a rotation: the new key encrypts new writes from now; workers move the rest."""
    if run_in_progress(session, org.id):
        raise RotationError("A rotation is already in progress for this organisation.")
    _current, new = check_keys(session, org, current_text, new_text)
    old = policy.active_key(session, org.id)
    label = ops.actor_label(actor)
    fp = crypto.fingerprint(crypto.key_id(new))
    mark_state(old, "decrypt_only", label)
    origin = "generated" if generated_fingerprint == fp else "imported"
    row = store_key(session, org.id, new, origin=origin, state="active", actor=label)
    forget_cached_keys()
    # Every key but the new one: a cancelled run's older key and platform keys included.
    found = sources(session, org.id, row.key_id)
    keys = _source_list(found, first=old.key_id)
    run = _new_run(session, org, actor, "rotation", keys, row.key_id)
    log_event(session, run, f"Rotation started: {old.fingerprint} → {fp}")
    _log_sources(session, run, keys[1:], found)
    unmovable = _report_unmovable(session, run, found)
    emit(
        session,
        "BYOK.rotation_started",
        actor=actor,
        company_id=org.id,
        details={
            "run_id": str(run.id),
            "old_fingerprint": old.fingerprint,
            "new_fingerprint": fp,
            "from_fingerprints": _fingerprints(keys),
            "items": _total(run),
            "unmovable": unmovable,
        },
    )
    return run


def _log_sources(session: Session, run: RotationRun, keys: list[str], found: Sources) -> None:
    """Note in the run's history the keys it moves items from (beyond the one it replaces)."""
    listed = [k for k in keys if found.items(k)]
    if listed:
        moving = ", ".join(
            f"{crypto.fingerprint(bytes.fromhex(k))} ({found.items(k)} items)" for k in listed
        )
        log_event(session, run, f"Moving the items under {moving}"[:400])


def start_encrypt_existing(session: Session, org: Organization, actor: Any) -> RotationRun:
    """Move every item not under the organisation's BYOK key onto it.

    That is the platform-key items from before BYOK, and also whatever an earlier BYOK key
    still holds (a cancelled run's, or one from before a Disable and re-Enable).
    """
    if run_in_progress(session, org.id):
        raise RotationError("A rotation is already in progress for this organisation.")
    active = policy.active_key(session, org.id)
    if active is None or active.origin == "platform":
        raise RotationError("Enable BYOK first: existing data moves to your key.")
    return _start_move(session, org, actor, active, "encrypt_existing")


def start_move_to_active(session: Session, org: Organization, actor: Any) -> RotationRun:
    """The compliance page's "Move them to the active key": the same run and audit event,
    moving whatever is left under any other readable key to the active key, whatever its
    origin (after a Disable, that is the platform key).
    """
    if run_in_progress(session, org.id):
        raise RotationError("A rotation is already in progress for this organisation.")
    active = policy.active_key(session, org.id)
    if active is None:
        raise RotationError(
            "There is no active key to move the items to: restore or enable a key first."
        )
    return _start_move(session, org, actor, active, "leftover")


def _start_move(
    session: Session, org: Organization, actor: Any, active: OrgKey, trigger: str
) -> RotationRun:
    """Start an encrypt-existing run from every readable key but the active one."""
    found = sources(session, org.id, active.key_id)
    keys = _source_list(found)
    if not any(found.items(k) for k in keys):
        raise RotationError(
            "Nothing to move: every item that can be read is already under the active key."
        )
    run = _new_run(session, org, actor, "encrypt_existing", keys, active.key_id)
    log_event(session, run, f"Encryption of existing data under {active.fingerprint} started")
    _log_sources(session, run, keys, found)
    unmovable = _report_unmovable(session, run, found)
    emit(
        session,
        "BYOK.encrypt_existing_started",
        actor=actor,
        company_id=org.id,
        details={
            "run_id": str(run.id),
            "items": _total(run),
            "from_fingerprints": _fingerprints(keys),
            "unmovable": unmovable,
            "trigger": trigger,
        },
    )
    return run


def _total(run: RotationRun) -> int:
    """All items the run planned to move."""
    return run.messages_total + run.attachments_total + run.metadata_total


CONTROL_STATES = {
    "pause": ({"running", "queued"}, "paused"),
    "resume": ({"paused", "failed"}, "running"),
    "cancel": ({"running", "queued", "paused", "failed"}, "cancelled"),
}
# Written out, not built from the verb, so the Audit Log's Type menu test can read them.
CONTROL_EVENTS = {
    "pause": "BYOK.rotation_paused",
    "resume": "BYOK.rotation_resumed",
    "cancel": "BYOK.rotation_cancelled",
}


def control(session: Session, run: RotationRun, action: str, actor: Any) -> RotationRun:
    """Pause, resume or cancel a run (workers notice at their next batch).

    A cancelled run can be resumed while nothing has superseded it (see ``can_resume``).
    """
    allowed, target = CONTROL_STATES[action]
    was = run.state
    if action == "resume" and was == "cancelled":
        problem = resume_refusal(session, run)
        if problem:
            raise RotationError(problem)
        _reopen(session, run)
    elif run.state not in allowed:
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
        raise RotationError(f"A {run.state} run cannot be {done}.")
    run.state = target
    if action == "cancel":
        run.finished_at = utcnow()
        log_event(
            session,
            run,
            "Cancelled: items keep whichever key they have; every key stays available, "
            "and the run can be resumed",
        )
    else:
        verb = "Paused" if action == "pause" else "Resumed"
        log_event(session, run, verb)
    if action == "resume":
        session.execute(
            update(RotationRange)
            .where(RotationRange.run_id == run.id, RotationRange.state != "done")
            .values(state="pending", worker=None, enqueued_at=None)
        )
    emit(
        session,
        CONTROL_EVENTS[action],
        actor=actor,
        company_id=run.company_id,
        details={"run_id": str(run.id), **({"from_state": was} if action == "resume" else {})},
    )
    return run


def resume_refusal(session: Session, run: RotationRun) -> str | None:
    """Why the run cannot be resumed now, or None when it can.

    A paused or failed run always can. A cancelled one can while it is its organisation's
    latest run, no other run is in progress, and its target key is still the active key:
    a key change since the cancellation means a new run must decide where items go.
    """
    if run.state in CONTROL_STATES["resume"][0]:
        return None
    if run.state != "cancelled":
        return f"A {run.state} run cannot be resumed."
    if run_in_progress(session, run.company_id):
        return "A rotation is already in progress for this organisation."
    latest = session.scalar(
        select(RotationRun.id)
        .where(RotationRun.company_id == run.company_id)
        .order_by(RotationRun.created_at.desc())
        .limit(1)
    )
    if latest != run.id:
        return "A later run was started since this one was cancelled; it cannot be resumed."
    active = policy.active_key(session, run.company_id)
    if active is None or active.key_id != run.new_key_id:
        return (
            "The run's new key is no longer the active key; start a new rotation or use "
            "Move them to the active key instead."
        )
    return None


def can_resume(session: Session, run: RotationRun) -> bool:
    """Whether a Resume control applies to the run (paused, failed, or resumable cancelled)."""
    return resume_refusal(session, run) is None


def _reopen(session: Session, run: RotationRun) -> None:
    """Prepare a cancelled run to go on: every readable key but its target, fresh totals.

    The ranges start again from their beginning (items already moved are no longer under a
    source key, so they are not read again) and keep their counts of items moved.
    """
    found = sources(session, run.company_id, run.new_key_id)
    keys = _source_list(found) or run.old_key_ids.split(",")
    run.old_key_ids = ",".join(keys)
    done = progress(session, run)
    left = count_items(session, run.company_id, keys)
    for kind in DATA_KINDS:
        setattr(run, f"{kind}_total", done.kinds[kind]["done"] + left[kind])
    session.execute(RotationFailure.__table__.delete().where(RotationFailure.run_id == run.id))
    session.execute(
        update(RotationRange)
        .where(RotationRange.run_id == run.id)
        .values(state="pending", cursor=None, worker=None, enqueued_at=None, failed=0)
    )
    run.finished_at = None
    log_event(session, run, f"Resuming the cancelled run: {sum(left.values())} items to move")
    _log_sources(session, run, keys, found)
    _report_unmovable(session, run, found)


def set_throttle(session: Session, run: RotationRun, per_second: float | None, actor: Any) -> None:
    """Limit how many batches per second each worker runs (None: no limit)."""
    if per_second is not None and not 0 < per_second <= 1000:
        raise RotationError(
            "The throttle must be between 0 and 1000 batches per second.",
            field="max_batches_per_second",
        )
    run.max_batches_per_second = per_second
    log_event(session, run, f"Throttle set to {per_second or 'unlimited'} batches/s")
    emit(
        session,
        "BYOK.rotation_throttled",
        actor=actor,
        company_id=run.company_id,
        details={"run_id": str(run.id), "max_batches_per_second": per_second},
    )


def retry_failed(session: Session, run: RotationRun, actor: Any) -> RotationRun:
    """Run another pass over the items a completed run could not move."""
    if run.state != "completed" or not failure_count(session, run):
        raise RotationError("Only a completed run with failed items can be retried.")
    if run_in_progress(session, run.company_id):
        raise RotationError("A rotation is already in progress for this organisation.")
    session.execute(RotationFailure.__table__.delete().where(RotationFailure.run_id == run.id))
    session.execute(
        update(RotationRange)
        .where(RotationRange.run_id == run.id)
        .values(state="pending", cursor=None, worker=None, enqueued_at=None, failed=0)
    )
    run.state, run.finished_at = "running", None
    log_event(session, run, "Retry of failed items started")
    emit(
        session,
        "BYOK.rotation_retry",
        actor=actor,
        company_id=run.company_id,
        details={"run_id": str(run.id)},
    )
    return run


def failure_count(session: Session, run: RotationRun) -> int:
    """How many items the run listed as failed."""
    return (
        session.scalar(
            select(func.count())
            .select_from(RotationFailure)
            .where(RotationFailure.run_id == run.id)
        )
        or 0
    )


def verify_and_finish(session: Session, run: RotationRun) -> str:
    """Count what is left under every readable key but the target; complete or go round again.

    The count is not limited to the keys the run started from: a key that became readable
    since (restored from a backup) or did not fit in the run's list joins the run for
    another pass. On completion each source key with nothing left under it is retired on its
    own; a key still holding items that could not be moved stays decrypt-only.
    """
    forget_cached_keys()  # key states as they are now, not as this process cached them
    found = sources(session, run.company_id, run.new_key_id)
    old = [k for k in run.old_key_ids.split(",") if k]
    holding = [k for k in found.keys if found.items(k)]
    left = sum(found.items(k) for k in holding)
    failed = failure_count(session, run)
    if left > failed:
        run.passes += 1
        if run.passes > MAX_PASSES:
            run.state, run.finished_at = "failed", utcnow()
            run.error = f"{left - failed} items were still under the old keys after verification"
            log_event(session, run, f"Failed: {run.error}")
            emit(
                session,
                "BYOK.rotation_failed",
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
            .values(state="pending", cursor=None, worker=None, enqueued_at=None)
        )
        run.state = "running"
        log_event(session, run, f"Verification found {left - failed} items left; another pass")
        return run.state
    _settle_totals(session, run)
    run.state, run.finished_at = "completed", utcnow()
    unmovable = sum(found.unmovable.values())
    if failed:
        summary = f"Completed; {failed} items could not be moved"
    elif unmovable:
        summary = "Completed and verified: nothing readable is left under the old keys"
    else:
        summary = "Completed and verified: nothing is left under the old keys"
    log_event(session, run, summary)
    _report_unmovable(session, run, found)
    emit(
        session,
        "BYOK.rotation_completed",
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
    for kind in DATA_KINDS:
        added = sum(found.counts.get(k, {}).get(kind, 0) for k in extra if k in keys)
        setattr(run, f"{kind}_total", getattr(run, f"{kind}_total") + added)
    _log_sources(session, run, [k for k in extra if k in keys], found)


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
        log_event(
            session,
            run,
            "Already under the new key through writes during the run: " + ", ".join(moved),
        )


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
    for row in rows:
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
        log_event(session, run, f"Old key {row.fingerprint} retired; its sealed copy destroyed")
        emit(
            session,
            "BYOK.key_retired",
            actor="system",
            company_id=run.company_id,
            details={"run_id": str(run.id), "fingerprint": row.fingerprint},
        )


@dataclass
class Progress:
    """A run's progress, read from a handful of rows (no table scans)."""

    run: RotationRun
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    bytes_done: int = 0
    now: datetime = field(default_factory=utcnow)

    @property
    def total(self) -> int:
        """Items planned."""
        return sum(k["total"] for k in self.kinds.values())

    @property
    def done(self) -> int:
        """Items moved or skipped as already moved."""
        return sum(k["done"] for k in self.kinds.values())

    @property
    def failed(self) -> int:
        """Items that could not be moved."""
        return sum(k["failed"] for k in self.kinds.values())

    @property
    def finished(self) -> bool:
        """Whether the run has ended (polling stops)."""
        return self.run.state not in ACTIVE_RUN_STATES

    def percent(self, kind: str | None = None) -> int:
        """Per cent done, overall or for one kind."""
        k = (
            self.kinds[kind]
            if kind
            else {"total": self.total, "done": self.done, "failed": self.failed}
        )
        if self.run.state == "completed" or not k["total"]:
            return 100 if self.run.state == "completed" or not k["total"] else 0
        return min(100, int(100 * (k["done"] + k["failed"]) / k["total"]))

    @property
    def elapsed(self) -> float:
        """Seconds the run has been going (to its end if finished)."""
        if self.run.started_at is None:
            return 0.0
        end = self.run.finished_at or self.now
        return max(0.001, (end - self.run.started_at).total_seconds())

    @property
    def items_per_second(self) -> float:
        """Average rate."""
        return (self.done + self.failed) / self.elapsed

    @property
    def mb_per_second(self) -> float:
        """Average ciphertext throughput."""
        return self.bytes_done / self.elapsed / 1e6

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate, while running."""
        left = self.total - self.done - self.failed
        rate = self.items_per_second
        return left / rate if self.run.state == "running" and rate > 0 and left > 0 else None

    def as_json(self) -> dict[str, Any]:
        """Return the progress as plain JSON values."""
        return {
            "id": str(self.run.id),
            "state": self.run.state,
            "kind": self.run.kind,
            **{k: dict(v) for k, v in self.kinds.items()},
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "percent": self.percent(),
            "items_per_second": round(self.items_per_second, 1),
            "mb_per_second": round(self.mb_per_second, 2),
            "eta_seconds": round(self.eta_seconds, 1) if self.eta_seconds else None,
        }


def progress(session: Session, run: RotationRun) -> Progress:
    """Sum the run's ranges per kind: a few dozen rows, whatever the data volume."""
    sums = session.execute(
        select(
            RotationRange.kind,
            func.sum(RotationRange.done),
            func.sum(RotationRange.failed),
            func.sum(RotationRange.bytes_done),
        )
        .where(RotationRange.run_id == run.id)
        .group_by(RotationRange.kind)
    ).all()
    result = Progress(run)
    for kind in DATA_KINDS:
        result.kinds[kind] = {"total": getattr(run, f"{kind}_total"), "done": 0, "failed": 0}
    for kind, done, failed, nbytes in sums:
        result.kinds[kind]["done"] = int(done or 0)
        result.kinds[kind]["failed"] = int(failed or 0)
        result.bytes_done += int(nbytes or 0)
    return result


def keyring_for_run(session: Session, run: RotationRun) -> crypto.Keyring:
    """The organisation's keyring: the old keys decrypt, the run's new key encrypts."""
    loaded = load_keys(session, run.company_id)
    if loaded.keyring.encrypting_key_id is None or (
        loaded.keyring.encrypting_key_id.hex() != run.new_key_id
    ):
        raise RotationError("The run's new key is not the organisation's active key.")
    return loaded.keyring
