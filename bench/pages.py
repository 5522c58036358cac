"""Pages that must not grow with the data: the Compliance page and a run's progress fragment.

    python bench/pages.py [--messages 1000000] [--requests 200] [--workers 2]

Seeds --messages messages (with ``bench/common.py``'s COPY seed) into a throwaway PostgreSQL
database migrated to head (BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/test; it is dropped afterwards), serves it with
``byok-portal serve`` (gunicorn, --workers processes, the embedded Redis in a temporary
BYOK_HOME unless BENCH_REDIS_URL is set), signs in as an org admin through the real login
form (CSRF token and session cookie) over one keep-alive connection, and times:

- the Compliance page (``GET /settings/compliance``) --requests times, before any run;
- a rotation run's progress fragment (``GET /rotations/<id>/progress``, as htmx polls it)
  --requests times. The run is started in-process and NO worker runs: it stays ``running``
  with its 1,000,000 items pending, so the fragment renders its live figures every time;
- the Compliance page again while that run is in progress (two keys, a run to show).

Every process it starts is stopped. It prints p50/p95 per page, and its last line is a JSON
object with ``messages``, ``compliance_p95_ms`` and ``progress_p95_ms`` (target: 20 ms each).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
from common import b64, create_database, drop_database, seed  # noqa: E402
from sqlalchemy import inspect  # noqa: E402

from portal import create_app, crypto  # noqa: E402
from portal.db import get_session, make_engine  # noqa: E402
from portal.migrate import upgrade  # noqa: E402
from portal.redis_conn import ensure_embedded, stop_embedded  # noqa: E402

ADMIN_EMAIL = "admin@bench.example"
TARGET_MS = 20.0
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


class Browser:
    """One keep-alive connection with a cookie jar: what a signed-in browser sends."""

    def __init__(self, port: int) -> None:
        """Open the connection (http.client reconnects when the server closes it)."""
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict | None = None, headers: dict | None = None
    ) -> tuple[int, str, float]:
        """Send one request; return (status, body, seconds taken)."""
        sent = {"Connection": "keep-alive", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        start = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=sent)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            self.conn.request(method, path, body=body, headers=sent)
            response = self.conn.getresponse()
            raw = response.read()
        took = time.perf_counter() - start
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response.status, raw.decode(), took

    def sign_in(self, email: str, password: str) -> None:
        """Sign in through the login form, as a person would."""
        status, page, _ = self.request("GET", "/login")
        found = CSRF.search(page)
        if status != 200 or not found:
            raise RuntimeError(f"no login form (HTTP {status})")
        form = {"csrf_token": found.group(1), "email": email, "password": password}
        status, page, _ = self.request("POST", "/login", form)
        if status != 302:
            raise RuntimeError(f"sign-in refused (HTTP {status}): {page[:300]}")


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], workers: int, log: Path) -> tuple[subprocess.Popen, int]:
    """Start ``byok-portal serve`` in its own process group; wait until it answers."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "portal.cli", "serve"]
            + ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited early:\n" + log.read_text()[-3000:])
        with suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/login")
            if conn.getresponse().status == 200:
                conn.close()
                return server, port
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError("the server did not answer within 60 s")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the gunicorn master this bench started and every process of its group."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(server.pid, signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which the given fraction of values lie (nearest rank), in ms."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def timed(browser: Browser, path: str, n: int, expect: str, **headers: str) -> list[float]:
    """Fetch a page n times (after a few warm-up requests); return the latencies."""
    latencies = []
    for i in range(n + 5):
        status, body, took = browser.request("GET", path, headers=headers)
        if status not in (200, 286) or expect not in body:
            raise RuntimeError(f"GET {path}: HTTP {status}, without {expect!r}: {body[:300]}")
        if i >= 5:  # each gunicorn worker's first request pays for its imports and templates
            latencies.append(took)
    return latencies


def own_recount(engine, org_id) -> bool:
    """Rebuild the per-key item counters after the COPY, where portal.chat.counts exists."""
    try:
        from portal.chat import counts
    except ImportError:  # a checkout from before the per-key counters
        return False
    with engine.begin() as conn:
        counts.recount(conn, org_id)
    return True


def setup(app, messages: int, password: str) -> tuple[bytes, bytes]:
    """An organisation with an enabled key, an admin, and the seeded messages."""
    from portal.auth.services import create_user
    from portal.keys import operations as ops
    from portal.orgs import create_org

    old, new = crypto.generate_key(), crypto.generate_key()
    with app.app_context():
        db = get_session()
        org = create_org(db, "Bench Org", "org_community", slug="bench")
        fp = ops.test_key(db, org, "bench", b64(old))
        ops.enable(db, org, "bench", b64(old), fp)
        create_user(db, ADMIN_EMAIL, password, "admin", org)
        db.commit()
        org_id = org.id
    started = time.perf_counter()
    seed(app, org_id, old, messages, 0)
    engine = app.extensions["db_engine"]
    if hasattr(common, "recount"):
        # bench/common.py's seed rebuilds the per-key counters itself, where they exist.
        recounted = inspect(engine).has_table("key_item_counts")
    else:
        recounted = own_recount(engine, org_id)
    counters = "per-key counters rebuilt" if recounted else "no per-key counters here"
    print(f"seeded {messages} messages in {time.perf_counter() - started:.1f} s ({counters})")
    return old, new


def start_run(app, old: bytes, new: bytes) -> str:
    """Start a rotation and enqueue nothing: with no worker it stays running, untouched."""
    from sqlalchemy import select

    from portal.models import Organization
    from portal.rotation.start import start_rotation

    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == "bench"))
        run = start_rotation(db, org, "bench", b64(old), b64(new))
        db.commit()
        return str(run.id)


def report(label: str, latencies: list[float]) -> dict[str, float]:
    """Print and return one page's p50 and p95."""
    p50, p95 = percentile(latencies, 0.50), percentile(latencies, 0.95)
    verdict = "ok" if p95 <= TARGET_MS else f"over the {TARGET_MS:.0f} ms target"
    print(
        f"{label:34} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   ({len(latencies)} requests, {verdict})"
    )
    return {"p50": round(p50, 2), "p95": round(p95, 2)}


def main() -> None:
    """Seed, serve, sign in and time both pages; JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    args = parser.parse_args()
    if args.messages < 1 or args.requests < 1 or args.workers < 1:
        parser.error("--messages, --requests and --workers must be positive")
    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("BENCH_REDIS_URL", "")
    url, name = create_database(base)
    home = Path(tempfile.mkdtemp(prefix="byok-pages-"))
    password = secrets.token_urlsafe(16)
    settings = {
        "DATABASE_URL": url,
        "BYOK_HOME": str(home),
        "BYOK_MASTER_KEY": b64(os.urandom(32)),
        "SECRET_KEY": secrets.token_urlsafe(32),
        **({"REDIS_URL": redis_url} if redis_url else {}),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BYOK_MASTER_KEY_FILE")}
    env.update(settings, PYTHONUNBUFFERED="1")
    app = server = None
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        app = create_app(dict(settings))
        old, new = setup(app, args.messages, password)
        if not redis_url:
            # Started here, once: gunicorn's workers starting it together would race, and the
            # loser's server would outlive the bench.
            ensure_embedded(home)
        server, port = start_server(env, args.workers, home / "serve.log")
        browser = Browser(port)
        browser.sign_in(ADMIN_EMAIL, password)
        compliance = report(
            "compliance page",
            timed(browser, "/settings/compliance", args.requests, "BYOK Configuration"),
        )
        started = time.perf_counter()
        run_id = start_run(app, old, new)
        print(
            f"rotation run {run_id} started in {time.perf_counter() - started:.1f} s (no workers)"
        )
        progress = report(
            "progress fragment (run pending)",
            timed(
                browser,
                f"/rotations/{run_id}/progress?known_state=running",
                args.requests,
                'data-testid="run-state">running',
                **{"HX-Request": "true"},
            ),
        )
        during = report(
            "compliance page (run in progress)",
            timed(browser, "/settings/compliance", args.requests, "watch its progress"),
        )
        # p95 on a small shared machine follows its load more than the pages: say what it was.
        load = round(os.getloadavg()[0], 1)
        print(f"load average (1 min) at the end: {load} on {os.cpu_count()} CPUs")
        print(
            json.dumps(
                {
                    "bench": "pages",
                    "load_average": load,
                    "messages": args.messages,
                    "requests": args.requests,
                    "workers": args.workers,
                    "compliance_p50_ms": compliance["p50"],
                    "compliance_p95_ms": compliance["p95"],
                    "progress_p50_ms": progress["p50"],
                    "progress_p95_ms": progress["p95"],
                    "compliance_during_run_p50_ms": during["p50"],
                    "compliance_during_run_p95_ms": during["p95"],
                }
            )
        )
    finally:
        if server is not None:
            stop_server(server)
        if app is not None:
            app.extensions["db_engine"].dispose()
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)
        drop_database(base, name)


if __name__ == "__main__":
    main()
