"""Load benchmark: portal pages and the data API under concurrent clients, idle and during a
rotation of 100,000 messages, over real HTTP (gunicorn) on loopback.

    python bench/load.py [--messages 100000] [--seconds 10] [--clients 8]

PostgreSQL (BENCH_DATABASE_URL, a throwaway database beside it) and Redis
(BENCH_REDIS_URL, flushed). The clients are threads with http.client: enough to drive a
2-core machine, and no load-testing framework to install. Rate limits are raised for the
run (they would otherwise, correctly, answer 429). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict

import redis
from common import b64, create_database, drop_database, seed

from portal import create_app, crypto
from portal.db import get_session, make_engine
from portal.migrate import upgrade

PASSWORD = "load-benchmark-password"


class Client:
    """One simulated user: a cookie jar and a CSRF token over plain HTTP connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict, bytes]:
        """Send one request; keep cookies."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
        conn.close()
        return response.status, dict(response.getheaders()), data

    def login(self, email: str) -> None:
        """Sign in through the form."""
        _, _, page = self.request("GET", "/login")
        token = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
        body = urllib.parse.urlencode(
            {"email": email, "password": PASSWORD, "csrf_token": token}
        ).encode()
        status, _, _ = self.request(
            "POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status != 302:
            raise SystemExit(f"sign-in failed: {status}")


def drive(
    port: int,
    seconds: float,
    clients: int,
    token: str,
    conv_ids: list[str],
    run_id: str | None,
    admin: str,
) -> dict[str, list[float]]:
    """Run the client threads for a while; return latencies (ms) per operation, or errors."""
    results: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    api = {"Authorization": f"Bearer {token}"}

    def worker(n: int) -> None:
        rng = random.Random(n)
        page = Client(port)
        page.login(admin)
        api_client = Client(port)
        while time.monotonic() < stop:
            roll = rng.random()
            conv = rng.choice(conv_ids)
            if roll < 0.45:
                op, args = "api_read", ("GET", f"/api/v1/conversations/{conv}?limit=50", None, api)
                client = api_client
            elif roll < 0.75:
                body = json.dumps({"body": "load " * 40, "author": "bench"}).encode()
                op, args = (
                    "api_write",
                    (
                        "POST",
                        f"/api/v1/conversations/{conv}/messages",
                        body,
                        {**api, "Content-Type": "application/json"},
                    ),
                )
                client = api_client
            elif roll < 0.9 and run_id:
                op, args = (
                    "progress_fragment",
                    ("GET", f"/rotations/{run_id}/progress", None, {"HX-Request": "true"}),
                )
                client = page
            else:
                op, args = "compliance_page", ("GET", "/settings/compliance", None, None)
                client = page
            started = time.perf_counter()
            try:
                status, _, _ = client.request(*args)
                ok = status in (200, 201, 286)
            except OSError:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if ok:
                    results[op].append(elapsed)
                else:
                    errors[op] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results["_errors"] = [float(sum(errors.values()))]
    for op, count in errors.items():
        results[f"_errors_{op}"] = [float(count)]
    return results


def summarise(results: dict[str, list[float]], seconds: float) -> dict[str, dict]:
    """Requests/s and latency percentiles per operation."""
    out = {}
    for op, values in sorted(results.items()):
        if op.startswith("_"):
            continue
        q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        out[op] = {
            "requests": len(values),
            "per_s": round(len(values) / seconds, 1),
            "p50_ms": round(q[49], 2),
            "p95_ms": round(q[94], 2),
            "p99_ms": round(q[98], 2),
        }
    return out


def main() -> None:
    """Set up, measure idle, start a rotation, measure during it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    redis.Redis.from_url(redis_url).flushdb()
    url, name = create_database(base)
    home = tempfile.mkdtemp(prefix="byok-load-")
    master = b64(os.urandom(32))
    settings = {
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "BYOK_HOME": home,
        "BYOK_MASTER_KEY": master,
        # A queue of its own: no other worker on this Redis can take (and lose) its jobs.
        "RQ_QUEUE": f"bench-{os.getpid()}",
    }
    env = {
        **os.environ,
        **settings,
        "RATELIMIT_API": "1000000/minute",
        "RATELIMIT_LOGIN_ADDRESS": "100000/minute",
        "RATELIMIT_LOGIN_ACCOUNT": "100000/minute",
        "SECRET_KEY": b64(os.urandom(32)),
    }
    procs: list[subprocess.Popen] = []
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        app = create_app(settings)
        from portal.auth.services import create_user
        from portal.chat.service import create_token
        from portal.keys import operations as ops
        from portal.orgs import create_org

        old, new = crypto.generate_key(), crypto.generate_key()
        with app.app_context():
            db = get_session()
            org = create_org(db, "Load Org", "org_community")
            create_user(db, "admin@load.example", PASSWORD, "admin", org)
            fp = ops.test_key(db, org, "bench", b64(old))
            ops.enable(db, org, "bench", b64(old), fp)
            token = create_token(db, org.id, "load")
            db.commit()
            org_id = org.id
        seed(app, org_id, old, args.messages, 0)
        with app.extensions["db_engine"].connect() as conn:
            conv_ids = [
                str(r[0]) for r in conn.exec_driver_sql("SELECT id FROM conversations LIMIT 200")
            ]
        port = 18000 + os.getpid() % 1000
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "portal.cli",
                    "serve",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "4",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "portal.cli", "worker"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for _ in range(100):
            try:
                if Client(port).request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        idle = drive(port, args.seconds, args.clients, token, conv_ids, None, "admin@load.example")
        from jobs.rotation import enqueue_ranges
        from portal.models import Organization
        from portal.rotation import service

        with app.app_context():
            db = get_session()
            run = service.start_rotation(
                db, db.get(Organization, org_id), "bench", b64(old), b64(new)
            )
            db.commit()
            run_id = str(run.id)
        enqueue_ranges(app, run.id)
        started = time.monotonic()
        busy = drive(
            port, args.seconds, args.clients, token, conv_ids, run_id, "admin@load.example"
        )
        with app.app_context():
            db = get_session()
            from portal.rotation.models import RotationRun

            state_after = db.get(RotationRun, run.id).state
        idle_s, busy_s = summarise(idle, args.seconds), summarise(busy, args.seconds)
        errors = {"idle": int(idle["_errors"][0]), "rotation": int(busy["_errors"][0])}
        print(
            f"{'phase':10} {'operation':18} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        )
        for phase, summary in (("idle", idle_s), ("rotation", busy_s)):
            for op, fig in summary.items():
                print(
                    f"{phase:10} {op:18} {fig['per_s']:8.1f} {fig['p50_ms']:8.2f} "
                    f"{fig['p95_ms']:8.2f} {fig['p99_ms']:8.2f}"
                )
        print(
            f"errors: {errors}; rotation state after the load phase "
            f"({time.monotonic() - started:.1f} s): {state_after}"
        )
        api_ratio = {
            op: round(busy_s[op]["p95_ms"] / idle_s[op]["p95_ms"], 2)
            for op in ("api_read", "api_write")
            if op in busy_s and op in idle_s
        }
        progress_p95 = busy_s.get("progress_fragment", {}).get("p95_ms")
        print(
            f"progress fragment p95 = {progress_p95} ms (target <= 20); "
            f"API p95 rotation/idle = {api_ratio} (target <= 2)"
        )
        print(
            json.dumps(
                {
                    "bench": "load",
                    "messages": args.messages,
                    "seconds": args.seconds,
                    "clients": args.clients,
                    "idle": idle_s,
                    "rotation": busy_s,
                    "errors": errors,
                    "progress_p95_ms": progress_p95,
                    "api_p95_ratio": api_ratio,
                    "rotation_state": state_after,
                }
            )
        )
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if "app" in locals():
            app.extensions["db_engine"].dispose()
        drop_database(base, name)
        redis.Redis.from_url(redis_url).flushdb()


if __name__ == "__main__":
    main()
