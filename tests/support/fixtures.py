"""The shared fixtures (a pytest plugin, registered in tests/conftest.py).

- ``api`` (= ``api_a``), ``api_b``, ``api_for(org)``: the bearer-token client of the data API.
- ``enable_byok(org_id)``: a fresh key enabled as the organisation's BYOK key.
- ``leaks``: the leak scanner (database, Redis, files, logs; raw, base64 and hex forms).
- ``html``: parse responses, read text by test id and field feedback.
- ``deployment`` and ``admin``: the wizard's deployment mode and the wizard as admin of org A.
- ``world``: org A's objects (BYOK on, a rotation running) for the security walk.
- ``own_redis``: a redis-server of the test's own (url, process), which it may stop.
- ``clock`` and ``mixed``: a settable clock for audit events, and a varied audit log of two orgs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from flask import Flask

from tests.support import rotation
from tests.support.api import Api, make_token
from tests.support.audit import clock, mixed
from tests.support.html import Html
from tests.support.leaks import LeakScanner
from tests.support.redis_server import own_redis
from tests.support.services import Services
from tests.support.walk import world
from tests.support.wizard import admin, deployment

__all__ = [
    "own_redis",
    "admin",
    "api",
    "api_a",
    "api_b",
    "api_for",
    "clock",
    "deployment",
    "enable_byok",
    "html",
    "leaks",
    "mixed",
    "world",
]


@pytest.fixture
def api_for(app: Flask, orgs: dict) -> Callable[..., Api]:
    """Make a data-API client of an organisation of ``orgs`` ('a' or 'b'), each its own."""

    def _api(org: str = "a", name: str | None = None) -> Api:
        """A client of its own holding a fresh token of the organisation."""
        return Api(app.test_client(), make_token(app, orgs[org]["id"], name or f"token-{org}"))

    return _api


@pytest.fixture
def api(api_for: Callable[..., Api]) -> Api:
    """A client of organisation A's data API."""
    return api_for("a")


@pytest.fixture
def api_a(api: Api) -> Api:
    """Organisation A's client, named beside ``api_b`` (the same client as ``api``)."""
    return api


@pytest.fixture
def api_b(api_for: Callable[..., Api]) -> Api:
    """A client of organisation B's data API."""
    return api_for("b")


@pytest.fixture
def enable_byok(app: Flask) -> Callable[..., bytes]:
    """Enable a fresh key for an organisation (on this app, or ``on`` another) and return it."""

    def _enable(org_id: uuid.UUID, on: Flask | None = None) -> bytes:
        """Enable a generated key through the key operations, as the CLI does."""
        return rotation.enable_byok(on or app, org_id)

    return _enable


@pytest.fixture
def leaks(app: Flask, services: Services, app_config: dict) -> LeakScanner:
    """The leak scanner over this test's database, Redis, files and logs."""
    return LeakScanner(app, services, app_config)


@pytest.fixture
def html() -> Html:
    """The HTML helper."""
    return Html()
