"""Recording audit events: every area calls ``emit`` and nothing else writes the table."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime
from typing import Any

from flask import current_app, has_app_context, has_request_context, request
from sqlalchemy import update
from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.audit.models import PLATFORM_CHAIN, AuditEvent, AuditHead
from portal.db import utcnow

GENESIS = "0" * 64
OUTCOMES = ("success", "failure", "denied")


# Built once: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The string encoder that encoder uses for every string (the C one where available).
_QUOTE = json.encoder.encode_basestring


def canonical(event: dict[str, Any]) -> bytes:
    """Encode the hashed fields of an event canonically (sorted keys, no spaces, UTF-8).

    This is the definition (docs/format.md); ``chain_bytes`` builds the same bytes faster.
    """
    return _CANONICAL.encode(event).encode()


def _q(value: str | None) -> str:
    """One JSON string (or null), exactly as the canonical encoder writes it."""
    return "null" if value is None else _QUOTE(value)


def chain_bytes(
    chain_id: str,
    seq: int,
    company_id: str | None,
    occurred_at: str,
    actor_type: str,
    actor_id: str | None,
    actor_label: str,
    action: str,
    outcome: str,
    source_ip: str | None,
    user_agent: str | None,
    details: str,
    prev_hash: str,
) -> bytes:
    """``canonical()`` of the hashed fields, written out directly in sorted key order.

    Every field is a string (or null) except ``seq``, so the encoding is a fixed template:
    verifying a chain spends its time here, and a dict plus a generic encoder per event was
    half of that. A property test holds it equal to ``canonical()``.
    """
    return (
        f'{{"action":{_q(action)},"actor_id":{_q(actor_id)},"actor_label":{_q(actor_label)},'
        f'"actor_type":{_q(actor_type)},"chain_id":{_q(chain_id)},'
        f'"company_id":{_q(company_id)},"details":{_q(details)},'
        f'"occurred_at":{_q(occurred_at)},"outcome":{_q(outcome)},'
        f'"prev_hash":{_q(prev_hash)},"seq":{int(seq)},"source_ip":{_q(source_ip)},'
        f'"user_agent":{_q(user_agent)}}}'
    ).encode()


def hashed_fields(ev: AuditEvent) -> dict[str, Any]:
    """Return the fields of an event that its hash covers."""
    return {
        "chain_id": str(ev.chain_id),
        "seq": ev.seq,
        "company_id": str(ev.company_id) if ev.company_id else None,
        "occurred_at": iso_time(ev.occurred_at),
        "actor_type": ev.actor_type,
        "actor_id": ev.actor_id,
        "actor_label": ev.actor_label,
        "action": ev.action,
        "outcome": ev.outcome,
        "source_ip": ev.source_ip,
        "user_agent": ev.user_agent,
        "details": ev.details,
        "prev_hash": ev.prev_hash,
    }


def iso_time(moment: datetime) -> str:
    """Format a time as UTC ISO 8601 whether or not the database kept its zone."""
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def event_hash(ev: AuditEvent) -> str:
    """Return the SHA-256 chain hash of an event (or of anything with its columns)."""
    return hashlib.sha256(chain_bytes(**hashed_fields(ev))).hexdigest()


def sign_head(signing_key: bytes | None, chain_id: uuid.UUID, seq: int, head: str) -> str | None:
    """HMAC the chain head under the master-key-derived audit key, when one is available."""
    if signing_key is None:
        return None
    message = f"{chain_id}:{seq}:{head}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def _signing_key() -> bytes | None:
    """Return the audit signing key of the current app, if a master key is loaded."""
    if not has_app_context():
        return None
    return current_app.extensions.get("audit_signing_key")


def _actor_fields(actor: Any) -> tuple[str, str | None, str, uuid.UUID | None]:
    """Describe an actor (a user, an API token, or a label such as 'cli' or 'system')."""
    if actor is None:
        return "anonymous", None, "anonymous", None
    if isinstance(actor, str):
        return "system" if actor != "cli" else "cli", None, actor, None
    kind = getattr(actor, "actor_type", "user")
    label = getattr(actor, "email", None) or getattr(actor, "name", "")
    if kind == "api_token":
        label = f"token:{label}"
    return kind, str(actor.id), label, getattr(actor, "company_id", None)


def emit(
    session: Session,
    action: Action,
    *,
    outcome: str = "success",
    actor: Any = None,
    company_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to its organisation's chain in the caller's transaction."""
    name = str(action)  # the plain name: a member stores and hashes exactly as its value
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    actor_type, actor_id, actor_label, actor_company = _actor_fields(actor)
    company_id = company_id or actor_company
    chain_id = company_id or PLATFORM_CHAIN
    source_ip = user_agent = None
    if has_request_context():
        source_ip = request.remote_addr
        user_agent = (request.user_agent.string or "")[:400] or None
    seq, prev = _advance_head(session, chain_id)
    ev = AuditEvent(
        chain_id=chain_id,
        seq=seq,
        company_id=company_id,
        occurred_at=utcnow(),
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label[:320],
        action=name,
        category=name.split(".", 1)[0],
        outcome=outcome,
        source_ip=source_ip,
        user_agent=user_agent,
        details=json.dumps(details or {}, sort_keys=True, separators=(",", ":")),
        prev_hash=prev,
    )
    ev.hash = event_hash(ev)
    session.add(ev)
    session.execute(
        update(AuditHead)
        .where(AuditHead.chain_id == chain_id)
        .values(hash=ev.hash, signature=sign_head(_signing_key(), chain_id, seq, ev.hash))
    )
    return ev


def _advance_head(session: Session, chain_id: uuid.UUID) -> tuple[int, str]:
    """Take the chain's head for this transaction and return (next seq, previous hash)."""
    # The UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite) before reading,
    # so concurrent writers of one chain line up instead of forking it.
    row = session.execute(
        update(AuditHead)
        .where(AuditHead.chain_id == chain_id)
        .values(seq=AuditHead.seq + 1)
        .returning(AuditHead.seq, AuditHead.hash)
    ).first()
    if row is not None:
        return row.seq, row.hash
    with session.begin_nested():
        session.add(AuditHead(chain_id=chain_id, seq=1, hash=GENESIS))
    return 1, GENESIS
