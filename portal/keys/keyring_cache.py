"""Values kept in this process between requests, ended on every process by Redis generations.

A data-API request should not reload and unseal its organisation's keys, nor look its token up
in the database. Both are kept here, in process memory only (never in Redis), each under the
*generations* it was built under: counters in Redis (``byok:keygen:<company_id>`` per
organisation, ``byok:keygen:all`` for changes to no single known organisation,
``byok:tokengen`` for tokens) that a committed change bumps. A kept value re-reads its
generations at most every ``CHECK_SECONDS`` (one MGET) and is dropped when they moved, so a
key event or a revoked token reaches every process within about half a second. When Redis does
not answer nothing is served from here: callers load from the database as they would without it.

Changes are noticed where rows change, not where callers remember to say so: mapper events on
the watched models (and bulk UPDATE/DELETE statements on their tables) mark the session, and
the marks are bumped after its transaction commits; a rollback drops them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from flask import Flask, current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, object_session

from portal.keys.models import OrgKey
from portal.redis_conn import SOCKET_NAME, connect

log = logging.getLogger(__name__)

KEYGEN_PREFIX = "byok:keygen:"
KEYGEN_ALL = "byok:keygen:all"
# How stale a kept value may be before its generations are read again.
CHECK_SECONDS = 0.5
# A keyring is rebuilt at least this often, even if no generation moved: it bounds what a
# bump that never reached Redis (Redis down at that commit) can leave behind.
KEYRING_SECONDS = 60.0
# Entries one cache holds before expired ones are swept (and, if still full, all of them).
MAX_ENTRIES = 10_000
_MARKS = "byok_generation_marks"
_MARK_APP = "byok_generation_app"
_CACHES = "generation_caches"
# Table name -> generation a bulk UPDATE/DELETE on it bumps (its rows are not known).
_BULK: dict[str, str] = {}


def keygen_names(company_id: uuid.UUID) -> tuple[str, str]:
    """The generations an organisation's keyring is kept under."""
    return f"{KEYGEN_PREFIX}{company_id}", KEYGEN_ALL


@dataclass
class _Slot:
    """One kept value with the generations it was built under."""

    value: Any
    names: tuple[str, ...]
    generation: tuple
    checked: float
    expires: float


class GenerationCache:
    """Values kept in this process while the Redis generations they were built under hold."""

    def __init__(self, app: Flask, clock: Callable[[], float] = time.monotonic) -> None:
        """Keep values for ``app`` (its Redis), timed by ``clock``."""
        self._app = app
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[Hashable, _Slot] = {}
        self._redis_down = False

    def __repr__(self) -> str:
        """Say how many values are kept, never which."""
        return f"<GenerationCache kept={len(self._slots)}>"

    def generation(self, names: tuple[str, ...]) -> tuple | None:
        """Read the generations now (one MGET); None when Redis does not answer."""
        try:
            client = _redis(self._app)
            if client is None:
                return None
            values = tuple(client.mget(names))
        except (redis.RedisError, OSError, RuntimeError) as exc:
            if not self._redis_down:
                log.warning("Redis did not answer (%s): nothing is served from caches", exc)
            self._redis_down = True
            return None
        self._redis_down = False
        return values

    def get(self, key: Hashable) -> Any:
        """Return the kept value while its generations hold, else None (and forget it)."""
        now = self._clock()
        with self._lock:
            slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires > now and now - slot.checked < CHECK_SECONDS:
            return slot.value
        if slot.expires > now and self.generation(slot.names) == slot.generation:
            slot.checked = now
            return slot.value
        with self._lock:
            if self._slots.get(key) is slot:
                del self._slots[key]
        return None

    def put(
        self, key: Hashable, value: Any, names: tuple[str, ...], generation: tuple, seconds: float
    ) -> None:
        """Keep a value built after ``generation`` was read, for at most ``seconds``."""
        now = self._clock()
        with self._lock:
            if len(self._slots) >= MAX_ENTRIES:
                self._slots = {k: s for k, s in self._slots.items() if s.expires > now}
                if len(self._slots) >= MAX_ENTRIES:
                    self._slots.clear()
            self._slots[key] = _Slot(value, names, generation, now, now + seconds)

    def drop(self, names: Iterable[str]) -> None:
        """Forget the values kept under any of ``names``."""
        with self._lock:
            gone = set(names)
            for key in [k for k, s in self._slots.items() if gone.intersection(s.names)]:
                del self._slots[key]


def cache_for(name: str) -> GenerationCache | None:
    """The current app's cache called ``name`` (made on first use); None outside an app."""
    if not has_app_context():
        return None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    caches = app.extensions.setdefault(_CACHES, {})
    if name not in caches:
        caches.setdefault(name, GenerationCache(app))
    return caches[name]


def forget(names: Iterable[str] | None = None) -> None:
    """Drop this process's values kept under ``names`` (every keyring when None) and bump
    those generations now, so that other processes drop theirs too."""
    if not has_app_context():
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    names = list(names or [KEYGEN_ALL])
    _drop_local(app, names)
    _bump(app, names)


def mark(session: Session, *names: str) -> None:
    """Bump these generations once the session's transaction commits (nothing on rollback)."""
    session.info.setdefault(_MARKS, set()).update(names)
    if has_app_context():
        session.info[_MARK_APP] = current_app._get_current_object()  # type: ignore[attr-defined]


def marked(session: Session, names: Iterable[str]) -> bool:
    """Tell whether the session changed rows (flushed, not yet committed) under any of names."""
    return bool(session.info.get(_MARKS, set()).intersection(names))


def watch(model: type, table: str, names_of: Callable[[Any], str], bulk_name: str) -> None:
    """Mark ``names_of(row)`` whenever a row of ``model`` is inserted, updated or deleted, and
    ``bulk_name`` for a bulk UPDATE or DELETE statement on ``table``."""

    def _changed(_mapper: Any, _connection: Any, target: Any) -> None:
        """Mark the row's generation in the session that flushes it."""
        session = object_session(target)
        if session is not None:
            mark(session, names_of(target))

    for name in ("after_insert", "after_update", "after_delete"):
        event.listen(model, name, _changed)
    _BULK[table] = bulk_name


def _drop_local(app: Flask, names: list[str]) -> None:
    """Drop this process's values kept under any of names, in every cache of app."""
    for cache in app.extensions.get(_CACHES, {}).values():
        cache.drop(names)


def _redis(app: Flask) -> redis.Redis | None:
    """The app's Redis; None where the embedded one has not been started (a CLI command then
    has nobody to tell and nothing to keep: a portal serving requests would have started it)."""
    embedded = not app.config.get("REDIS_URL") and "redis" not in app.extensions
    if embedded and not (Path(app.config["BYOK_HOME"]) / SOCKET_NAME).exists():
        return None
    return connect(app)


def _bump(app: Flask, names: Iterable[str]) -> None:
    """INCR each generation in one round trip; a failure is logged (kept values then live out
    their own time, KEYRING_SECONDS at most) and never fails the caller."""
    try:
        client = _redis(app)
        if client is None:
            return
        pipe = client.pipeline(transaction=False)
        for name in sorted(set(names)):
            pipe.incr(name)
        pipe.execute()
    except (redis.RedisError, OSError, RuntimeError) as exc:
        log.warning("could not tell other processes of a change (%s): %s", ", ".join(names), exc)


@event.listens_for(Session, "after_commit")
def _bump_after_commit(session: Session) -> None:
    """Bump what the committed transaction changed, after the data is visible to others."""
    names = session.info.pop(_MARKS, None)
    app = session.info.pop(_MARK_APP, None)
    if not names:
        return
    if app is None:
        log.warning("a change was committed outside an app: caches were not told")
        return
    _drop_local(app, list(names))
    _bump(app, names)


@event.listens_for(Session, "after_rollback")
def _drop_marks(session: Session) -> None:
    """Nothing was changed: bump nothing."""
    session.info.pop(_MARKS, None)
    session.info.pop(_MARK_APP, None)


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(state: ORMExecuteState) -> None:
    """A bulk UPDATE or DELETE on a watched table changes rows no mapper event sees."""
    if state.is_update or state.is_delete:
        table = getattr(getattr(state.statement, "table", None), "name", None)
        if table in _BULK:
            mark(state.session, _BULK[table])


watch(OrgKey, OrgKey.__tablename__, lambda row: keygen_names(row.company_id)[0], KEYGEN_ALL)
