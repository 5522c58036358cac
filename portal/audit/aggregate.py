"""Failed decryptions, aggregated per key and minute so a broken key cannot flood the log.

The first failures of a key in a minute are recorded at once (the log shows the problem
immediately); further failures in that minute only count up in Redis, per actor and kind of
item, and when the minute is over one follow-up event per actor is written with its counts
per kind and a few sample item ids of each. Keys are named by fingerprint, as everywhere
people read them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from flask import current_app, has_app_context
from sqlalchemy.orm import Session

from portal import crypto
from portal.audit.actions import Action
from portal.events import emit

SAMPLES = 20
# Separates the parts of a bucket field; JSON escapes it, so an actor's label cannot hold it.
_SEP = "\x1f"


@dataclass(frozen=True)
class RecordedActor:
    """An actor as a failure bucket keeps it (type, id, label), shaped as emit() reads one."""

    actor_type: str
    id: str
    name: str
    email: str | None = None
    company_id: None = None


def _key_ids(key_id: str) -> list[str]:
    """The hex key ids named by hex ids or fingerprints, comma-separated ('unknown' stays)."""
    ids = []
    for part in key_id.split(","):
        try:
            ids.append(crypto.parse_fingerprint(part).hex())
        except ValueError:
            ids.append(part.strip())
    return ids


def fingerprints(key_id: str) -> str:
    """Name the key (or a rotation's old keys) as people see them: by fingerprint."""
    names = []
    for part in _key_ids(key_id):
        try:
            names.append(crypto.fingerprint(bytes.fromhex(part)))
        except ValueError:
            names.append(part)
    return ", ".join(names)


def _actor_ref(actor: Any) -> str:
    """Encode who read as JSON for Redis: a label string, or [type, id, label] (no secret)."""
    if actor is None or isinstance(actor, str):
        return json.dumps(actor)
    label = getattr(actor, "email", None) or getattr(actor, "name", "")
    return json.dumps([getattr(actor, "actor_type", "user"), str(actor.id), label])


def _actor(ref: str) -> Any:
    """Rebuild the actor ``_actor_ref`` encoded, for emit()."""
    value = json.loads(ref)
    if value is None or isinstance(value, str):
        return value
    kind, ident, label = value
    return RecordedActor(kind, ident, label, email=label if kind == "user" else None)


def _details(key_id: str, minute: str, kinds: dict[str, tuple[int, list[str]]]) -> dict:
    """An event's details: the key, the failures per kind with samples, and their total."""
    return {
        "fingerprint": fingerprints(key_id),
        "count": sum(n for n, _ in kinds.values()),
        "kinds": {kind: n for kind, (n, _) in kinds.items()},
        "items": {kind: samples[:SAMPLES] for kind, (_, samples) in kinds.items()},
        "minute": minute,
    }


# Failures aggregated this way, by name: failed decryptions, and a key service that refused a
# use of the organisation's key or did not answer (each counted apart, in its own bucket).
AGGREGATED = {
    "encryption_key.decrypt_failed": Action.DECRYPT_FAILED,
    "encryption_key.key_service_denied": Action.KEY_SERVICE_DENIED,
    "encryption_key.key_service_unreachable": Action.KEY_SERVICE_UNREACHABLE,
}


def _bucket_key(
    company_id: uuid.UUID, key_id: str, minute: str, action: Action = Action.DECRYPT_FAILED
) -> str:
    """Redis hash that counts one key's failures of one action in one minute."""
    if action == Action.DECRYPT_FAILED:  # the name buckets had before other actions were counted
        return f"byok:decrypt-failed:{company_id}:{key_id}:{minute}"
    return f"byok:{action.value}:{company_id}:{key_id}:{minute}"


def record(
    session: Session,
    company_id: uuid.UUID,
    key_id: str,
    kind: str,
    items: list[str],
    actor: Any,
    now: datetime | None = None,
    action: Action = Action.DECRYPT_FAILED,
) -> bool:
    """Count failed decryptions; return True if an event was written now (first in minute).

    ``key_id`` is the hex key id (comma-separated for a rotation's old keys, or "unknown");
    ``actor`` is the API token, user or system label that read. ``action`` is one of
    AGGREGATED: failed decryptions by default.
    """
    if action not in AGGREGATED.values():
        raise ValueError(f"{action} is not an aggregated failure")
    now = now or datetime.now(UTC)
    minute = now.strftime("%Y-%m-%dT%H:%MZ")
    key_text = ",".join(_key_ids(key_id))
    details = _details(key_text, minute, {kind: (len(items), items)})
    client = _redis()
    if client is None:
        emit(
            session,
            action,
            outcome="failure",
            actor=actor,
            company_id=company_id,
            details=details,
        )
        return True
    name = _bucket_key(company_id, key_text, minute, action)
    try:
        pipe = client.pipeline()
        pipe.hsetnx(name, "first", 1)
        pipe.expire(name, 86400)
        first, _ = pipe.execute()
        if not first:
            group = _SEP.join((_actor_ref(actor), kind))
            pipe = client.pipeline()
            pipe.hincrby(name, "n" + _SEP + group, len(items))
            pipe.hsetnx(name, "s" + _SEP + group, json.dumps(items[:SAMPLES]))
            pipe.execute()
    except (redis.RedisError, OSError):
        first = True  # without Redis every failure is written: flooding beats losing it
    if first:
        emit(
            session,
            action,
            outcome="failure",
            actor=actor,
            company_id=company_id,
            details=details,
        )
        _schedule_flush(company_id, key_text, minute, now, action)
    return bool(first)


def _redis() -> redis.Redis | None:
    """The app's Redis, if there is an app."""
    if not has_app_context():
        return None
    from portal.redis_conn import get_redis

    return get_redis()


def _schedule_flush(
    company_id: uuid.UUID, key_id: str, minute: str, now: datetime, action: Action
) -> None:
    """Ask a worker to write the minute's follow-up event once the minute is over."""
    from portal.redis_conn import make_queue

    try:
        queue = make_queue(_redis(), current_app.config["RQ_QUEUE"])
        at = now.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=1)
        # Failed decryptions keep the job's arguments from before other actions were counted.
        extra = () if action == Action.DECRYPT_FAILED else (action.value,)
        tag = "decrypt-failed" if not extra else action.value.split(".")[-1].replace("_", "-")
        queue.enqueue_at(
            at,
            "jobs.audit.flush_decrypt_failures",
            str(company_id),
            key_id,
            minute,
            *extra,
            # RQ job ids allow letters, digits, dashes and underscores only.
            job_id=f"{tag}-{company_id}-{key_id.replace(',', '_')}-"
            f"{minute.replace(':', '').replace('-', '')}",
        )
    except (redis.RedisError, OSError, ValueError):
        pass  # the first event is written; only the follow-up count is at stake


def _groups(bucket: dict[bytes, bytes]) -> dict[str, dict[str, tuple[int, list[str]]]]:
    """A bucket's counts and samples, per actor and then per kind."""
    groups: dict[str, dict[str, tuple[int, list[str]]]] = {}
    for raw_field, raw_value in bucket.items():
        tag, _, group = raw_field.decode().partition(_SEP)
        if tag not in ("n", "s"):
            continue
        actor, _, kind = group.rpartition(_SEP)
        count, samples = groups.setdefault(actor, {}).get(kind, (0, []))
        if tag == "n":
            count = int(raw_value)
        else:
            samples = json.loads(raw_value)
        groups[actor][kind] = (count, samples)
    return groups


def flush(
    session: Session,
    company_id: uuid.UUID,
    key_id: str,
    minute: str,
    action_name: str = Action.DECRYPT_FAILED.value,
) -> int:
    """Write one event per actor with the failures counted after the first ones.

    ``key_id`` is the hex key id or the fingerprint the first event shows; ``action_name``
    one of AGGREGATED's names (as queued). Returns the number of failures written.
    """
    client = _redis()
    if client is None:
        return 0
    key_text = ",".join(_key_ids(key_id))
    name = _bucket_key(company_id, key_text, minute, AGGREGATED[action_name])
    pipe = client.pipeline()
    pipe.hgetall(name)
    pipe.delete(name)
    bucket, _ = pipe.execute()
    written = 0
    for actor, kinds in sorted(_groups(bucket).items()):
        details = _details(key_text, minute, kinds)
        if details["count"] <= 0:
            continue
        emit(
            session,
            AGGREGATED[action_name],
            outcome="failure",
            actor=_actor(actor),
            company_id=company_id,
            details={**details, "aggregated": True},
        )
        written += details["count"]
    return written
