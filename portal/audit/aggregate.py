"""Failed decryptions, aggregated per key and minute so a broken key cannot flood the log.

The first failures of a key in a minute are recorded at once (the log shows the problem
immediately); further failures in that minute only count up in Redis, and one follow-up
event with their count is written when the minute is over.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from flask import current_app, has_app_context
from sqlalchemy.orm import Session

from portal.events import emit

ACTION = "encryption_key.decrypt_failed"
SAMPLES = 20


def _bucket_key(company_id: uuid.UUID, key_id: str, minute: str) -> str:
    """Redis hash that counts one key's failures in one minute."""
    return f"byok:decrypt-failed:{company_id}:{key_id}:{minute}"


def record(
    session: Session,
    company_id: uuid.UUID,
    key_id: str,
    kind: str,
    items: list[str],
    actor: Any,
    now: datetime | None = None,
) -> bool:
    """Count failed decryptions; return True if an event was written now (first in minute)."""
    now = now or datetime.now(UTC)
    minute = now.strftime("%Y-%m-%dT%H:%MZ")
    details = {
        "key_id": key_id,
        "kind": kind,
        "count": len(items),
        "items": items[:SAMPLES],
        "minute": minute,
    }
    client = _redis()
    if client is None:
        emit(
            session, ACTION, outcome="failure", actor=actor, company_id=company_id, details=details
        )
        return True
    name = _bucket_key(company_id, key_id, minute)
    try:
        pipe = client.pipeline()
        pipe.hsetnx(name, "first", len(items))
        pipe.hincrby(name, "total", len(items))
        pipe.hset(name, "kind", kind)
        pipe.hset(name, "samples", json.dumps(items[:SAMPLES]))
        pipe.expire(name, 86400)
        first, _total, *_ = pipe.execute()
    except (redis.RedisError, OSError):
        first = True  # without Redis every failure is written: flooding beats losing it
    if first:
        emit(
            session, ACTION, outcome="failure", actor=actor, company_id=company_id, details=details
        )
        _schedule_flush(company_id, key_id, minute, now)
    return bool(first)


def _redis() -> redis.Redis | None:
    """The app's Redis, if there is an app."""
    if not has_app_context():
        return None
    from portal.redis_conn import get_redis

    return get_redis()


def _schedule_flush(company_id: uuid.UUID, key_id: str, minute: str, now: datetime) -> None:
    """Ask a worker to write the minute's follow-up event once the minute is over."""
    from portal.serving import make_queue

    try:
        queue = make_queue(_redis(), current_app.config["RQ_QUEUE"])
        at = now.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=1)
        queue.enqueue_at(
            at,
            "jobs.audit.flush_decrypt_failures",
            str(company_id),
            key_id,
            minute,
            # RQ job ids allow letters, digits, dashes and underscores only.
            job_id=f"decrypt-failed-{company_id}-{key_id.replace(',', '_')}-"
            f"{minute.replace(':', '').replace('-', '')}",
        )
    except (redis.RedisError, OSError, ValueError):
        pass  # the first event is written; only the follow-up count is at stake


def flush(session: Session, company_id: uuid.UUID, key_id: str, minute: str) -> int:
    """Write one event with the failures counted after the first ones; return that count."""
    client = _redis()
    if client is None:
        return 0
    name = _bucket_key(company_id, key_id, minute)
    pipe = client.pipeline()
    pipe.hgetall(name)
    pipe.delete(name)
    bucket, _ = pipe.execute()
    if not bucket:
        return 0
    later = int(bucket.get(b"total", 0)) - int(bucket.get(b"first", 0))
    if later > 0:
        emit(
            session,
            ACTION,
            outcome="failure",
            actor="system",
            company_id=company_id,
            details={
                "key_id": key_id,
                "kind": bucket.get(b"kind", b"").decode(),
                "count": later,
                "minute": minute,
                "aggregated": True,
                "items": json.loads(bucket.get(b"samples", b"[]")),
            },
        )
    return later
