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
    run = _new_run(session, org, actor, "rotation", [old.key_id], row.key_id)
    log_event(session, run, f"Rotation started: {old.fingerprint} → {fp}")
    emit(
        session,
        "BYOK.rotation_started",
        actor=actor,
        company_id=org.id,
        details={
            "run_id": str(run.id),
            "old_fingerprint": old.fingerprint,
            "new_fingerprint": fp,
            "items": _total(run),
        },
    )
    return run


def start_encrypt_existing(session: Session, org: Organization, actor: Any) -> RotationRun:
    """Move items still under platform keys to the organisation's BYOK key."""
    if run_in_progress(session, org.id):
        raise RotationError("A rotation is already in progress for this organisation.")
    active = policy.active_key(session, org.id)
    if active is None or active.origin == "platform":
        raise RotationError("Enable BYOK first: existing data moves to your key.")
    platform = [
        r.key_id
        for r in session.scalars(
            select(OrgKey).where(
                OrgKey.company_id == org.id,
                OrgKey.origin == "platform",
                OrgKey.state == "decrypt_only",
            )
        )
    ]
    if not platform:
        raise RotationError("No items are under a platform key.")
    run = _new_run(session, org, actor, "encrypt_existing", platform, active.key_id)
    log_event(session, run, f"Encryption of existing data under {active.fingerprint} started")
    emit(
        session,
        "BYOK.encrypt_existing_started",
        actor=actor,
        company_id=org.id,
        details={"run_id": str(run.id), "items": _total(run)},
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
    """Pause, resume or cancel a run (workers notice at their next batch)."""
    allowed, target = CONTROL_STATES[action]
    if run.state not in allowed:
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
        raise RotationError(f"A {run.state} run cannot be {done}.")
    run.state = target
    if action == "cancel":
        run.finished_at = utcnow()
        log_event(
            session, run, "Cancelled: items keep whichever key they have; both keys stay available"
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
        details={"run_id": str(run.id)},
    )
    return run


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
    """Count what is left under the old keys; complete (retiring them) or go round again."""
    old = run.old_key_ids.split(",")
    left = sum(count_items(session, run.company_id, old).values())
    failed = failure_count(session, run)
    if left > failed:
        run.passes += 1
        if run.passes > MAX_PASSES:
            run.state, run.finished_at = "failed", utcnow()
            run.error = f"{left - failed} items were still under the old key after verification"
            log_event(session, run, f"Failed: {run.error}")
            emit(
                session,
                "BYOK.rotation_failed",
                actor="system",
                company_id=run.company_id,
                outcome="failure",
                details={"run_id": str(run.id), "left": left},
            )
            return run.state
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
    log_event(
        session,
        run,
        f"Completed; {failed} items could not be moved"
        if failed
        else "Completed and verified: nothing is left under the old key",
    )
    emit(
        session,
        "BYOK.rotation_completed",
        actor="system",
        company_id=run.company_id,
        details={"run_id": str(run.id), "failed": failed},
    )
    if failed == 0:
        _retire(session, run, old)
    return run.state


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


def _retire(session: Session, run: RotationRun, old: list[str]) -> None:
    """Retire the old keys: their sealed copies are destroyed, nothing needs them now."""
    rows = session.scalars(
        select(OrgKey).where(
            OrgKey.company_id == run.company_id,
            OrgKey.key_id.in_(old),
            OrgKey.state == "decrypt_only",
        )
    )
    for row in rows:
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
