"""The failed items of a rotation download in full as CSV: in the app and from real gunicorn.

Some messages' ciphertexts are damaged after the run starts, so the real worker lists them as
failed; the CSV must then name every one of them (more than the page lists), whole body read.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import re
import secrets
import sys
import uuid
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from flask import Flask
from sqlalchemy import select

from portal import crypto
from portal.chat.models import Message
from portal.db import get_session
from portal.models import Organization, User
from portal.rotation.controls import failure_count
from portal.rotation.models import RotationRun
from portal.rotation.queue import enqueue_ranges
from portal.rotation.start import start_rotation
from portal.rotation.views import failures as failures_view
from tests.support.nginx import start_process, stop_process, wait_until
from tests.support.processes import free_port
from tests.support.rotation import b64, enable_byok, run_worker, seed
from tests.support.web import PASSWORD

DAMAGED = 130  # more than the 100 the run page lists
HEADER = ["kind", "item_id", "reason", "at"]


def _run_with_failures(app: Flask, org_id: uuid.UUID) -> tuple[uuid.UUID, set[str]]:
    """Start a rotation, damage some messages' tags, run it; return the run and their ids."""
    old = enable_byok(app, org_id)
    seed(app, org_id, conversations=4, messages=40, attachments=1)
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        admin = db.scalar(select(User).where(User.company_id == org_id, User.role == "admin"))
        run = start_rotation(db, org, admin, b64(old), b64(crypto.generate_key()))
        db.commit()
        run_id = run.id
        damaged: set[str] = set()
        for message in db.scalars(
            select(Message).where(Message.company_id == org_id).order_by(Message.id).limit(DAMAGED)
        ):
            body = bytearray(message.body_ct)
            body[-1] ^= 0xFF  # the GCM tag no longer matches: decryption fails
            message.body_ct = bytes(body)
            damaged.add(str(message.id))
        db.commit()
    enqueue_ranges(app, run_id)
    run_worker(app)
    with app.app_context():
        state = get_session().get(RotationRun, run_id).state
        assert state == "completed", state
        assert failure_count(get_session(), get_session().get(RotationRun, run_id)) == DAMAGED
    return run_id, damaged


def _assert_lists_every_failure(body: str, damaged: set[str]) -> None:
    """The CSV parses, has its header, and one 'messages' row per damaged item."""
    rows = list(csv.reader(io.StringIO(body)))
    assert rows and rows[0] == HEADER, rows[:2]
    items = rows[1:]
    assert all(len(row) == 4 and row[0] == "messages" and row[2] for row in items), items[:3]
    listed = [str(uuid.UUID(row[1])) for row in items]
    assert len(listed) == len(set(listed)) == DAMAGED
    assert set(listed) == damaged


def test_failures_csv_lists_every_failed_item_through_the_app(app, login_as, orgs, monkeypatch):
    run_id, damaged = _run_with_failures(app, orgs["a"]["id"])
    monkeypatch.setattr(failures_view, "FAILURES_CSV_PAGE", 50)  # three pages of rows
    client = login_as("admin_a")
    response = client.get(f"/rotations/{run_id}/failures.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert f'filename="rotation-{run_id}-failures.csv"' in response.headers["Content-Disposition"]
    _assert_lists_every_failure(response.get_data(as_text=True), damaged)
    # The page lists the first 100 and links the CSV for the rest.
    page = client.get(f"/rotations/{run_id}").get_data(as_text=True)
    assert f"Failed items ({DAMAGED})" in page and "failures.csv" in page
    # Another organisation's admin gets 404, not the list.
    client.post("/logout", data={"csrf_token": _token(client.get("/").get_data(as_text=True))})
    login_as("admin_b")
    assert client.get(f"/rotations/{run_id}/failures.csv").status_code == 404


def _token(html: str) -> str:
    """The CSRF token a page carries."""
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def _request(port: int, method: str, path: str, headers: dict, body: str | None = None):
    """One request to the local server, its body read to the end (a dropped stream raises)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        raw = conn.getresponse()
        return raw.status, raw.headers, raw.read().decode()
    finally:
        conn.close()


def test_failures_csv_downloads_in_full_from_real_gunicorn(app, app_config, orgs, tmp_path):
    run_id, damaged = _run_with_failures(app, orgs["a"]["id"])
    port = free_port()
    env = {
        **os.environ,
        "BYOK_HOME": app_config["BYOK_HOME"],
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
        "SECRET_KEY": "csv-" + secrets.token_hex(8),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "web.log"
    python = [sys.executable, "-m", "portal.cli"]
    web = start_process(
        [*python, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env, log
    )
    procs = {"web": (web, log)}
    try:

        def healthy() -> bool:
            return _request(port, "GET", "/healthz", {})[0] == 200

        wait_until(healthy, "gunicorn", procs)
        status, headers, html = _request(port, "GET", "/login", {})
        assert status == 200, html
        jar = SimpleCookie()
        for value in headers.get_all("Set-Cookie") or []:
            jar.load(value)
        cookie = "; ".join(f"{k}={m.value}" for k, m in jar.items())
        status, headers, body = _request(
            port,
            "POST",
            "/login",
            {
                "Cookie": cookie,
                "Referer": f"http://127.0.0.1:{port}/login",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            urlencode(
                {
                    "csrf_token": _token(html),
                    "email": orgs["users"]["admin_a"],
                    "password": PASSWORD,
                }
            ),
        )
        assert status == 302, body
        for value in headers.get_all("Set-Cookie") or []:
            jar.load(value)
        cookie = "; ".join(f"{k}={m.value}" for k, m in jar.items())
        status, headers, body = _request(
            port, "GET", f"/rotations/{run_id}/failures.csv", {"Cookie": cookie}
        )
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/csv")
        _assert_lists_every_failure(body, damaged)
    finally:
        stop_process(web)
    assert "Working outside of application context" not in log.read_text(errors="replace")
