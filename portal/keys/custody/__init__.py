"""Key custody: the registry of backends that seal organisation keys.

A backend is registered once under its name. New keys are sealed by the backend named in the
KEY_CUSTODY setting; every stored key row names the backend that sealed it (its ``custody``
column) and is unsealed by that one, so backends can change without re-sealing old keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from flask import current_app

from portal.keys.custody import aws_kms, master_key, master_service, pkcs11_hsm, vault_transit
from portal.keys.custody.base import (
    CustodyError,
    Factory,
    KeyAccessRevoked,
    KeyCustody,
    KeyServiceUnreachable,
    Startup,
)
from portal.keys.custody.client import KeyServiceClient
from portal.keys.custody.keyservice import PROVIDERS, KeyRef, ServiceFactory

__all__ = [
    "DEFAULT",
    "PROVIDERS",
    "CustodyError",
    "Factory",
    "KeyAccessRevoked",
    "KeyCustody",
    "KeyRef",
    "KeyServiceClient",
    "KeyServiceUnreachable",
    "Startup",
    "backend_for",
    "configured",
    "get",
    "key_service",
    "key_services",
    "names",
    "register",
    "register_service",
    "registered",
    "service_problems",
    "start",
    "start_services",
]

DEFAULT = master_key.NAME
_FACTORIES: dict[str, Factory] = {}
_SERVICES: dict[str, ServiceFactory] = {}

log = logging.getLogger(__name__)


class SealedRow(Protocol):
    """A stored key row as far as custody cares: which backend sealed it."""

    custody: str | None


def register(name: str, factory: Factory) -> None:
    """Make a backend known under name (a second, different factory for a name is refused)."""
    if _FACTORIES.get(name, factory) is not factory:
        raise ValueError(f"a key custody backend named {name!r} is already registered")
    _FACTORIES[name] = factory


@contextmanager
def registered(name: str, factory: Factory) -> Iterator[None]:
    """Register a backend for the duration of a block (for tests)."""
    register(name, factory)
    try:
        yield
    finally:
        _FACTORIES.pop(name, None)


def names() -> list[str]:
    """Return the names of every registered backend, sorted."""
    return sorted(_FACTORIES)


def get(name: str) -> Factory:
    """Return the factory registered under name, or raise CustodyError naming the known ones."""
    try:
        return _FACTORIES[name]
    except KeyError:
        raise CustodyError(
            f"unknown key custody backend {name!r}; known backends: {', '.join(names())}"
        ) from None


def start(startup: Startup) -> dict[str, KeyCustody]:
    """Start every registered backend that can run here; the others are left out."""
    backends: dict[str, KeyCustody] = {}
    for name, factory in sorted(_FACTORIES.items()):
        try:
            backend = factory(startup)
        except CustodyError as exc:
            log.error("key custody backend %s not started: %s", name, exc)
            continue
        if backend is None:
            continue
        if backend.name != name:
            # Rows store backend.name; a mismatch would make every key it seals unreadable.
            raise ValueError(f"backend registered as {name!r} calls itself {backend.name!r}")
        backends[name] = backend
    return backends


def configured() -> KeyCustody | None:
    """Return the backend that seals new keys in the current app, or None if it is not running."""
    return current_app.extensions.get("custody")


def backend_for(row: SealedRow) -> KeyCustody | None:
    """Return the running backend that sealed row, or None when this installation lacks it."""
    backends = current_app.extensions.get("custody_backends", {})
    return backends.get(row.custody) if row.custody is not None else None


def register_service(name: str, factory: ServiceFactory) -> None:
    """Make an external key service provider known under name (see keyservice.py)."""
    if _SERVICES.get(name, factory) is not factory:
        raise ValueError(f"a key service provider named {name!r} is already registered")
    _SERVICES[name] = factory


def start_services(config) -> tuple[dict[str, KeyServiceClient], dict[str, str]]:
    """Start every configured key service; return them and, per provider, why one did not."""
    started: dict[str, KeyServiceClient] = {}
    problems: dict[str, str] = {}
    for name in PROVIDERS:
        factory = _SERVICES.get(name)
        if factory is None:
            continue
        try:
            service = factory(config)
        except CustodyError as exc:
            log.error("key service %s not started: %s", name, exc)
            problems[name] = str(exc)
            continue
        if service is None:
            continue
        started[name] = KeyServiceClient(
            service,
            cache_seconds=config.get("KMS_CACHE_SECONDS", 300),
            breaker_seconds=config.get("KMS_BREAKER_SECONDS", 10),
        )
    return started, problems


def key_services() -> dict[str, KeyServiceClient]:
    """The key services this process started, by provider name."""
    return current_app.extensions.get("key_services", {})


def service_problems() -> dict[str, str]:
    """Why a configured provider did not start (say, its optional extra is not installed)."""
    return current_app.extensions.get("key_service_problems", {})


def key_service(name: str | None) -> KeyServiceClient | None:
    """Return the started key service of that provider, or None."""
    return key_services().get(name) if name else None


register(master_key.NAME, master_key.start)
register_service("vault-transit", vault_transit.start)
register_service("pkcs11", pkcs11_hsm.start)
register_service("aws-kms", aws_kms.start)
# The installation master key held in Transit or an HSM (MASTER_KEY_PROVIDER).
register(master_service.VAULT_TRANSIT, master_service.start_vault_transit)
register(master_service.PKCS11, master_service.start_pkcs11)
