"""Backup/restore drill: the database restored onto an installation with another master key.

As docs/deploy.md ("Restore", "Restoring onto an installation with another master key")
tells an operator: dump the database (``pg_dump --format=custom`` / SQLite's online backup),
restore it into a NEW database, run ``byok-portal init`` there with a different master key,
and start the portal. Organisation A's keys then show ``unavailable``, the data API answers
"unreadable" for reads and 503 for writes, nothing crashes; the admin restores key K in the
wizard (htmx, as the browser does it, and once in a real Chromium) and every item reads back
identical: the same plaintext hashes, the same API answers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from portal import create_app, crypto
from portal.chat.service import create_token
from portal.db import get_session
from portal.keys import operations as ops
from portal.models import Organization
from tests.support.processes import run_cli
from tests.support.rotation import b64, enable_byok, plaintext_digest
from tests.support.web import PASSWORD, csrf_token, login, require_or_skip

API = "/api/v1"


# --- writing and reading through the API ----------------------------------------------------


def write_data(client: FlaskClient, auth: dict[str, str]) -> None:
    """Conversations, messages (one edited) and attachments, all through the data API."""
    for c in range(3):
        created = client.post(
            f"{API}/conversations",
            json={"title": f"Board minutes {c} ✓", "metadata": {"n": c, "tags": ["q3", "é"]}},
            headers=auth,
        )
        assert created.status_code == 201, created.get_data(as_text=True)
        conv = created.get_json()["id"]
        for m in range(4):
            body = f"message {m} of {c}: " + "ünïcødé " * m
            sent = client.post(
                f"{API}/conversations/{conv}/messages",
                json={"author": f"user{m}", "body": body},
                headers=auth,
            )
            assert sent.status_code == 201
        edited = client.patch(
            f"{API}/messages/{sent.get_json()['id']}", json={"body": "edited ✎"}, headers=auth
        )
        assert edited.status_code == 200
        for a in range(2):
            content = secrets.token_bytes(3000 + a)
            stored = client.post(
                f"{API}/conversations/{conv}/attachments",
                data={"file": (io.BytesIO(content), f"scan-{c}-{a}.pdf")},
                headers=auth,
            )
            assert stored.status_code == 201


def read_everything(client: FlaskClient, auth: dict[str, str]) -> dict:
    """Every answer of the API about the organisation's data (attachments by content hash)."""
    listing = client.get(f"{API}/conversations", headers=auth)
    assert listing.status_code == 200
    out: dict = {"list": listing.get_json()}
    for summary in listing.get_json()["conversations"]:
        detail = client.get(f"{API}/conversations/{summary['id']}", headers=auth)
        assert detail.status_code == 200
        out[summary["id"]] = detail.get_json()
        for att in detail.get_json()["attachments"]:
            blob = client.get(f"{API}/attachments/{att['id']}", headers=auth)
            assert blob.status_code in (200, 409), blob.status_code
            out[att["id"]] = (
                (blob.status_code, hashlib.sha256(blob.data).hexdigest())
                if blob.status_code == 200
                else (blob.status_code, blob.get_json())
            )
    return out


# --- dump and restore ------------------------------------------------------------------------


@contextmanager
def restored_copy(database_url: str, workdir: Path) -> Iterator[str]:
    """Dump the database and restore it into a new one; yield its URL, drop it afterwards."""
    if database_url.startswith("sqlite"):
        source = make_url(database_url).database
        target = workdir / "restored.sqlite3"
        src, dst = sqlite3.connect(source), sqlite3.connect(target)
        try:
            src.backup(dst)  # SQLite's online backup API: a consistent copy of a live database
        finally:
            src.close()
            dst.close()
        yield f"sqlite:///{target}"
        return
    require_or_skip(
        bool(shutil.which("pg_dump") and shutil.which("pg_restore")),
        "pg_dump/pg_restore are not installed",
    )
    url = make_url(database_url).set(drivername="postgresql")
    name = f"{url.database}_restored"
    target = url.set(database=name)
    admin = create_engine(
        url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        dump = workdir / "byok.dump"
        subprocess.run(
            [
                "pg_dump",
                "--format=custom",
                f"--file={dump}",
                url.render_as_string(hide_password=False),
            ],
            check=True,
        )
        subprocess.run(
            [
                "pg_restore",
                "--no-owner",
                "--exit-on-error",
                f"--dbname={target.render_as_string(hide_password=False)}",
                str(dump),
            ],
            check=True,
        )
        yield target.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run the real ``byok-portal`` command on the new installation; it must succeed."""
    done = run_cli(env, *args, stdin=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# --- the drill -------------------------------------------------------------------------------


@pytest.fixture
def drill(app: Flask, app_config: dict, orgs: dict, services, tmp_path: Path):
    """Data under key K written on the first installation, then a second installation.

    Yields a dict: the new app, its environment, key K, org A's token, and what the first
    installation read (plaintext hashes and API answers).
    """
    org_a = orgs["a"]["id"]
    key = enable_byok(app, org_a)
    with app.app_context():
        db = get_session()
        token = create_token(db, org_a, "drill")
        token_b = create_token(db, orgs["b"]["id"], "drill-b")
        db.commit()
    auth = {"Authorization": f"Bearer {token}"}
    write_data(app.test_client(), auth)
    write_data(app.test_client(), {"Authorization": f"Bearer {token_b}"})
    digests = plaintext_digest(app, org_a)
    assert len(digests) == 3 + 3 * 4 + 3 * 2
    api_before = read_everything(app.test_client(), auth)

    other_master = base64.b64encode(secrets.token_bytes(32)).decode()
    assert other_master != app_config["BYOK_MASTER_KEY"]
    other_home = tmp_path / "other-installation"
    with restored_copy(services.database_url, tmp_path) as restored_url:
        env = {
            "DATABASE_URL": restored_url,
            "BYOK_HOME": str(other_home),
            "BYOK_MASTER_KEY": other_master,
            "REDIS_URL": app_config["REDIS_URL"],
        }
        init = cli(env, "init")  # the documented restore procedure runs init on the new host
        assert "master key" in init
        other = create_app(
            {
                **app_config,
                "DATABASE_URL": restored_url,
                "BYOK_MASTER_KEY": other_master,
                "BYOK_HOME": str(other_home),
                "BYOK_MASTER_KEY_FILE": str(other_home / "master.key"),
                "SECRET_KEY": "other-installation-" + secrets.token_hex(8),
            }
        )
        try:
            yield {
                "app": other,
                "env": env,
                "key": key,
                "org": org_a,
                "auth": auth,
                "auth_b": {"Authorization": f"Bearer {token_b}"},
                "digests": digests,
                "api_before": api_before,
                "slug": orgs["a"]["slug"],
                "admin": orgs["users"]["admin_a"],
            }
        finally:
            other.extensions["db_engine"].dispose()


def key_states(app: Flask, org_id) -> dict[str, str]:
    """Fingerprint -> state as the status panel and ``key status`` report them."""
    with app.app_context():
        db = get_session()
        status = ops.status(db, db.get(Organization, org_id))
        return {k["fingerprint"]: k["state"] for k in status.keys}


def assert_unavailable_and_nothing_crashes(drill: dict) -> None:
    """The restored installation before the key is restored."""
    app, key = drill["app"], drill["key"]
    fp = crypto.fingerprint(crypto.key_id(key))
    states = key_states(app, drill["org"])
    assert states[fp] == "unavailable"
    assert set(states.values()) == {"unavailable"}  # the platform key cannot come back at all
    status = json.loads(cli(drill["env"], "key", "status", "--org", drill["slug"], "--json"))
    assert {k["fingerprint"]: k["state"] for k in status["keys"]} == states

    client = app.test_client()
    auth = drill["auth"]
    listing = client.get(f"{API}/conversations", headers=auth)
    assert listing.status_code == 200
    conversations = listing.get_json()["conversations"]
    assert len(conversations) == 3
    for summary in conversations:
        assert (summary["status"], summary["reason"]) == ("unreadable", "key_unavailable")
        detail = client.get(f"{API}/conversations/{summary['id']}", headers=auth).get_json()
        assert {(m["body"]["status"], m["body"]["reason"]) for m in detail["messages"]} == {
            ("unreadable", "key_unavailable")
        }
        for att in detail["attachments"]:
            blob = client.get(f"{API}/attachments/{att['id']}", headers=auth)
            assert blob.status_code == 409 and blob.get_json()["reason"] == "key_unavailable"
    conv = conversations[0]["id"]
    writes = [
        client.post(f"{API}/conversations", json={"title": "new"}, headers=auth),
        client.post(
            f"{API}/conversations/{conv}/messages", json={"author": "a", "body": "b"}, headers=auth
        ),
    ]
    for response in writes:
        assert response.status_code == 503 and response.get_json()["error"] == "key_unavailable"
    # Organisation B had only its platform key: unreadable too, but answered, not crashed.
    listing_b = client.get(f"{API}/conversations", headers=drill["auth_b"])
    assert listing_b.status_code == 200
    assert {c["status"] for c in listing_b.get_json()["conversations"]} == {"unreadable"}

    # Every page without parameters, for the admin, answers without a server error.
    admin = app.test_client()
    assert login(admin, drill["admin"]).status_code == 302
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods and not rule.arguments:
            response = admin.get(rule.rule)
            response.get_data()
            assert response.status_code < 500, (rule.rule, response.status_code)
    page = admin.get("/settings/compliance").get_data(as_text=True)
    row = re.search(rf'<tr data-fingerprint="{fp}">.*?</tr>', page, re.S)
    assert row and "state-unavailable" in row.group(0)
    assert "are unreadable until the key is restored" in page
    assert 'id="restore-form"' in page


def assert_reads_back_identical(drill: dict) -> None:
    """After the restore: K usable again, every item identical, new writes accepted."""
    app, key = drill["app"], drill["key"]
    fp = crypto.fingerprint(crypto.key_id(key))
    assert key_states(app, drill["org"])[fp] == "active"
    assert plaintext_digest(app, drill["org"]) == drill["digests"]
    client = app.test_client()
    assert read_everything(client, drill["auth"]) == drill["api_before"]
    created = client.post(f"{API}/conversations", json={"title": "after"}, headers=drill["auth"])
    assert created.status_code == 201
    again = client.get(f"{API}/conversations/{created.get_json()['id']}", headers=drill["auth"])
    assert again.get_json()["title"] == "after"


def test_restore_drill_with_another_master_key(drill):
    assert_unavailable_and_nothing_crashes(drill)
    app, key = drill["app"], drill["key"]
    admin = app.test_client()
    assert login(admin, drill["admin"]).status_code == 302
    headers = {"HX-Request": "true", "X-CSRFToken": csrf_token(admin, "/settings/compliance")}
    wrong = admin.post(
        "/settings/compliance/byok/restore",
        data={"key": b64(crypto.generate_key()), "password": PASSWORD},
        headers=headers,
    )
    assert wrong.status_code == 422  # a key the organisation never had is refused
    restored = admin.post(
        "/settings/compliance/byok/restore",
        data={"key": b64(key) + "\n", "password": PASSWORD},
        headers=headers,
    )
    html = restored.get_data(as_text=True)
    fp = crypto.fingerprint(crypto.key_id(key))
    assert restored.status_code == 200, html
    assert f"Key {fp} is restored" in html and restored.headers["HX-Retarget"] == "#byok"
    assert b64(key) not in html
    assert_reads_back_identical(drill)
    status = json.loads(cli(drill["env"], "key", "status", "--org", drill["slug"], "--json"))
    assert status["active_fingerprint"] == fp


@pytest.mark.browser
def test_restore_drill_in_a_real_browser(drill, browser):
    from playwright.sync_api import expect
    from werkzeug.serving import make_server

    assert_unavailable_and_nothing_crashes(drill)
    app, key = drill["app"], drill["key"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(f"{base}/login")
        page.get_by_label("Email").fill(drill["admin"])
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Compliance Policies").first.click()
        page.wait_for_url("**/settings/compliance")
        fp = crypto.fingerprint(crypto.key_id(key))
        row = page.locator(f"tr[data-fingerprint='{fp}']")
        expect(row).to_contain_text("unavailable")
        page.locator("#restore-key").fill(b64(key) + "\n")
        page.locator("#restore-password").fill(PASSWORD)
        page.get_by_role("button", name="Restore key").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Key {fp} is restored")
        expect(page.get_by_test_id("active-fingerprint")).to_have_text(fp)
        expect(row).to_contain_text("active")
        assert b64(key) not in page.content()
    finally:
        context.close()
        server.shutdown()
        thread.join(timeout=10)
    assert_reads_back_identical(drill)
