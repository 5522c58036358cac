"""Every call to a customer's key service goes through here: cache, circuit breaker, health.

- **Data-key cache.** An unwrapped data key is kept in this process's memory for at most
  ``KMS_CACHE_SECONDS`` from the unwrap that produced it, then asked for again. That bounds
  how long a revocation in the customer's service takes to bite. Nothing here is written to
  the database, Redis or logs.
- **Circuit breaker.** After a call finds the service unreachable, calls fail at once for
  ``KMS_BREAKER_SECONDS`` instead of each waiting out a timeout; then one call tries again.
- **Health.** The last successful call, the last failure and the state that pages,
  ``key status`` and ``/healthz`` show: ``reachable``, ``unreachable`` or ``denied``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.keyservice import KeyInfo, KeyRef, KeyService, WrapContext

T = TypeVar("T")
STATES = ("unknown", "reachable", "unreachable", "denied")


@dataclass(frozen=True)
class Health:
    """What is known of a key service from this process's calls (no secrets)."""

    provider: str
    label: str
    state: str
    last_success: datetime | None
    last_error: str | None
    circuit_open_for: int

    def as_json(self) -> dict[str, object]:
        """Plain JSON values for ``/healthz`` and ``key status --json``."""
        return {
            "provider": self.provider,
            "state": self.state,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_error": self.last_error,
            "circuit_open_seconds": self.circuit_open_for,
        }


def _cache_key(ref: KeyRef, wrapped: bytes, context: WrapContext) -> tuple:
    """Identify one wrapped data key under one reference, without keeping the blob itself."""
    return (
        ref.provider,
        ref.ref,
        ref.role_arn,
        hashlib.sha256(bytes(wrapped)).digest(),
        tuple(sorted(context.items())),
    )


class KeyServiceClient:
    """One provider's service, with the data-key cache, the breaker and the health record."""

    def __init__(
        self,
        service: KeyService,
        cache_seconds: float = 300,
        breaker_seconds: float = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wrap service; cache_seconds of 0 turns the data-key cache off."""
        self.service = service
        self.name = service.name
        self.label = service.label
        self.ref_label = service.ref_label
        self.cache_seconds = cache_seconds
        self.breaker_seconds = breaker_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple[bytes, float]] = {}
        self._open_until = 0.0
        self._state = "unknown"
        self._last_success: datetime | None = None
        self._last_error: str | None = None

    def __repr__(self) -> str:
        """Name the provider and how many data keys are cached, never which."""
        return f"<KeyServiceClient {self.name} state={self._state} cached={len(self._cache)}>"

    # -- calls ---------------------------------------------------------------------------

    def check_ref(self, ref: str) -> str | None:
        """Return why ref is not a well-formed reference for this provider, or None."""
        return self.service.check_ref(ref)

    def wrap(self, ref: KeyRef, data_key: bytes, context: WrapContext) -> bytes:
        """Wrap a new data key, and cache it as unwrapped from the result."""
        wrapped = self._call(lambda: self.service.wrap(ref, data_key, context))
        self._remember(ref, wrapped, context, data_key)
        return wrapped

    def unwrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext) -> bytes:
        """Return the data key, from the cache while it is fresh, else from the service."""
        cache_key = _cache_key(ref, wrapped, context)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None and hit[1] > now:
                return hit[0]
            self._cache.pop(cache_key, None)
        key = self._call(lambda: self.service.unwrap(ref, wrapped, context))
        self._remember(ref, wrapped, context, key)
        return key

    def round_trip(self, ref: KeyRef, data_key: bytes, context: WrapContext) -> bytes:
        """Wrap and unwrap a throwaway key (Test): nothing is cached."""
        wrapped = self._call(lambda: self.service.wrap(ref, data_key, context))
        return self._call(lambda: self.service.unwrap(ref, wrapped, context))

    def rewrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext, new_ref: KeyRef) -> bytes:
        """Wrap the same data key under new_ref's key (newest version)."""
        return self._call(lambda: self.service.rewrap(ref, wrapped, context, new_ref))

    def describe(self, ref: KeyRef) -> KeyInfo:
        """Ask the service about ref's key."""
        return self._call(lambda: self.service.describe(ref))

    def ping(self) -> None:
        """Prove the service answers (used by health checks)."""
        self._call(self.service.ping)

    # -- cache ---------------------------------------------------------------------------

    def cached_until(self, ref: KeyRef, wrapped: bytes, context: WrapContext) -> datetime | None:
        """When the cached copy of this data key expires (wall clock), or None if not cached."""
        with self._lock:
            hit = self._cache.get(_cache_key(ref, wrapped, context))
        if hit is None or hit[1] <= self._clock():
            return None
        return datetime.now(UTC).replace(microsecond=0) + timedelta(
            seconds=int(hit[1] - self._clock() + 0.999)
        )

    def forget(self) -> None:
        """Drop every cached data key (a key event: re-wrap, retire, disconnect)."""
        with self._lock:
            self._cache.clear()

    def _remember(self, ref: KeyRef, wrapped: bytes, context: WrapContext, key: bytes) -> None:
        """Cache an unwrapped data key for cache_seconds from now."""
        if self.cache_seconds <= 0:
            return
        with self._lock:
            now = self._clock()
            # Expired entries go on every insert, so the cache holds live keys only.
            for stale in [k for k, (_, exp) in self._cache.items() if exp <= now]:
                del self._cache[stale]
            self._cache[_cache_key(ref, wrapped, context)] = (bytes(key), now + self.cache_seconds)

    # -- breaker and health ----------------------------------------------------------------

    def health(self) -> Health:
        """The state as this process last saw it."""
        with self._lock:
            remaining = max(0, int(self._open_until - self._clock() + 0.999))
            return Health(
                self.name, self.label, self._state, self._last_success, self._last_error, remaining
            )

    def _call(self, call: Callable[[], T]) -> T:
        """Run one call through the breaker, recording what it showed about the service."""
        with self._lock:
            wait = self._open_until - self._clock()
        if wait > 0:
            raise KeyServiceUnreachable(
                f"{self.label} did not answer recently; not retried for {int(wait + 0.999)} s",
                retry_after=int(wait + 0.999),
            )
        try:
            result = call()
        except KeyServiceUnreachable as exc:
            with self._lock:
                self._open_until = self._clock() + self.breaker_seconds
                self._note("unreachable", str(exc))
            exc.retry_after = max(exc.retry_after, int(self.breaker_seconds))
            raise
        except KeyAccessRevoked as exc:
            with self._lock:
                self._note("denied", str(exc))
            raise
        except CustodyError as exc:
            # The service answered (say, a wrapped key it cannot open): it is reachable.
            with self._lock:
                self._note("reachable", str(exc))
            raise
        with self._lock:
            self._state = "reachable"
            self._last_success = datetime.now(UTC)
        return result

    def _note(self, state: str, error: str) -> None:
        """Record a failed call (the lock is held)."""
        self._state = state
        self._last_error = error
