"""Verifying the audit hash chains, and pruning old events behind a signed checkpoint."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.audit.models import AuditCheckpoint, AuditEvent, AuditHead
from portal.events import GENESIS, chain_bytes, emit, iso_time, sign_head

# Verification reads each chain row as plain values in chain_bytes() argument order (after
# chain_id), then the stored hash and id: no ORM objects, UUID or type-decorator work per row.
_CHAIN_COLUMNS = (
    AuditEvent.actor_type, AuditEvent.actor_id, AuditEvent.actor_label, AuditEvent.action,
    AuditEvent.outcome, AuditEvent.source_ip, AuditEvent.user_agent, AuditEvent.details,
    AuditEvent.prev_hash, AuditEvent.hash, AuditEvent.id,
)  # fmt: skip
# PostgreSQL formats the time exactly as iso_time() does, which saves a datetime per row.
_PG_TIME = func.to_char(
    func.timezone("UTC", AuditEvent.occurred_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
)


@dataclass
class VerifyResult:
    """The outcome of verifying one chain."""

    chain_id: uuid.UUID
    checked: int
    ok: bool
    event_id: int | None = None
    seq: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        """Describe the result in one line."""
        if self.ok:
            return f"chain {self.chain_id}: ok, {self.checked} events"
        where = f"event id {self.event_id} (seq {self.seq})" if self.event_id else f"seq {self.seq}"
        return f"chain {self.chain_id}: BROKEN at {where}: {self.reason}"


def _signature_ok(
    key: bytes | None, chain_id: uuid.UUID, seq: int, head: str, signature: str | None
) -> bool:
    """Check a head or checkpoint signature (True when no key is loaded to check with)."""
    if key is None:
        return True
    expected = sign_head(key, chain_id, seq, head)
    return signature is not None and hmac.compare_digest(expected, signature)


def verify_chain(
    session: Session, chain_id: uuid.UUID, signing_key: bytes | None = None
) -> VerifyResult:
    """Walk one chain in order: links, contents, no gaps, and a signed head that matches."""
    checkpoint = session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.chain_id == chain_id)
        .order_by(AuditCheckpoint.seq.desc())
        .limit(1)
    )
    prev, seq = GENESIS, 1
    if checkpoint is not None:
        if not _signature_ok(
            signing_key, chain_id, checkpoint.seq, checkpoint.hash, checkpoint.signature
        ):
            return VerifyResult(
                chain_id,
                0,
                False,
                None,
                checkpoint.seq,
                "the pruning checkpoint's signature does not match",
            )
        prev, seq = checkpoint.hash, checkpoint.seq + 1
    chain_text = str(chain_id)
    # Each chain is one organisation's (or the platform's, which has none).
    company_text = None if chain_id.int == 0 else chain_text
    as_text = session.get_bind().dialect.name == "postgresql"
    time_column = _PG_TIME if as_text else AuditEvent.occurred_at
    query = (
        select(AuditEvent.seq, time_column, *_CHAIN_COLUMNS)
        .where(AuditEvent.chain_id == chain_id)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=5000)
    )
    rows = session.connection().execute(query)
    sha256 = hashlib.sha256
    checked, last_id = 0, None
    for row in rows:
        row_seq, at, actor_type, actor_id, label, action, outcome, ip, agent, details = row[:10]
        stored_prev, stored_hash, row_id = row[10:]
        if not as_text:
            at = iso_time(at)
        reason = ""
        if row_seq != seq:
            reason = (
                f"events {seq} to {row_seq - 1} are missing"
                if row_seq > seq
                else f"sequence goes back from {seq - 1} to {row_seq}"
            )
        elif stored_prev != prev:
            reason = "does not link to the event before it (moved or replaced)"
        else:
            encoded = chain_bytes(
                chain_text, seq, company_text, at, actor_type, actor_id, label, action,
                outcome, ip, agent, details, stored_prev,
            )  # fmt: skip
            if sha256(encoded).hexdigest() != stored_hash:
                reason = "its contents were changed after it was written"
        if reason:
            return VerifyResult(chain_id, checked, False, row_id, row_seq, reason)
        prev, seq, last_id = stored_hash, seq + 1, row_id
        checked += 1
    head = session.get(AuditHead, chain_id)
    last_seq = seq - 1
    if head is None:
        if checked:
            return VerifyResult(
                chain_id, checked, False, last_id, last_seq, "the chain head record is missing"
            )
        return VerifyResult(chain_id, 0, True)
    if head.seq != last_seq or head.hash != prev:
        return VerifyResult(
            chain_id,
            checked,
            False,
            last_id,
            last_seq,
            f"the chain was cut: its head is at event {head.seq}, the log ends at {last_seq}",
        )
    if not _signature_ok(signing_key, chain_id, head.seq, head.hash, head.signature):
        return VerifyResult(
            chain_id,
            checked,
            False,
            last_id,
            last_seq,
            "the head signature does not match: the chain was rewritten",
        )
    return VerifyResult(chain_id, checked, True)


def chain_ids(session: Session, company_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    """Every chain (or one organisation's), from the heads and the events themselves."""
    if company_id is not None:
        return [company_id]
    heads = set(session.scalars(select(AuditHead.chain_id)))
    return sorted(heads | set(session.scalars(select(AuditEvent.chain_id).distinct())), key=str)


def verify_all(
    session: Session, signing_key: bytes | None, company_id: uuid.UUID | None = None
) -> list[VerifyResult]:
    """Verify every chain, or one organisation's."""
    return [verify_chain(session, c, signing_key) for c in chain_ids(session, company_id)]


@contextmanager
def _pruning(session: Session) -> Iterator[None]:
    """Let this transaction delete audit events (the append-only triggers allow nothing else)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.set_config("byok.audit_prune", "on", True)))
        yield
        session.execute(select(func.set_config("byok.audit_prune", "off", True)))
    else:
        session.execute(text("INSERT INTO audit_prune_flag (id) VALUES (1)"))
        yield
        session.execute(text("DELETE FROM audit_prune_flag"))


def prune(session: Session, before: datetime, signing_key: bytes | None) -> dict[uuid.UUID, int]:
    """Delete events older than ``before``, leaving a signed checkpoint so chains still verify."""
    pruned: dict[uuid.UUID, int] = {}
    for chain_id in chain_ids(session):
        last = session.execute(
            select(AuditEvent.seq, AuditEvent.hash)
            .where(AuditEvent.chain_id == chain_id, AuditEvent.occurred_at < before)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).first()
        if last is None:
            continue
        count = (
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.chain_id == chain_id, AuditEvent.seq <= last.seq)
            )
            or 0
        )
        session.add(
            AuditCheckpoint(
                chain_id=chain_id,
                seq=last.seq,
                hash=last.hash,
                signature=sign_head(signing_key, chain_id, last.seq, last.hash),
                pruned=count,
            )
        )
        with _pruning(session):
            session.execute(
                delete(AuditEvent).where(
                    AuditEvent.chain_id == chain_id, AuditEvent.seq <= last.seq
                )
            )
        pruned[chain_id] = count
    for chain_id, count in pruned.items():
        company = None if chain_id.int == 0 else chain_id
        emit(
            session,
            Action.AUDIT_PRUNED,
            actor="system",
            company_id=company,
            details={"events": count, "before": before.isoformat()},
        )
    return pruned
