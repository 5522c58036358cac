"""Load benchmark: portal pages and the data API under concurrent users, idle and during a
rotation of 100,000 messages, over real HTTP (gunicorn) on loopback, driven by Locust.

    pip install -e '.[bench]'
    python bench/load.py [--messages 100000] [--seconds 20] [--watchers 4] [--page-users 2]
                         [--api-clients 4] [--workers 1] [--throttle BATCHES_PER_S]

PostgreSQL (BENCH_DATABASE_URL, a throwaway database beside it) and Redis
(BENCH_REDIS_URL, flushed). The users (bench/locustfile.py) each keep a fixed pace, so the
offered load is stated and the latencies are those at that load: run watchers poll the
progress fragment once a second as the run page does, page users open the compliance page
every 2 s, API clients send 4 requests a second (3 reads : 2 writes). The idle phase runs
for --seconds; the rotation phase from the start of the rotation until it ends (at most
--seconds), so every request of it is served while the rotation runs; --throttle sets the
run's max batches per second per worker, as an admin can on the run page. Rate limits are
raised for the run (they would otherwise, correctly, answer 429). The last line is a JSON
object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import redis
from common import b64, create_database, drop_database, seed

from portal import create_app, crypto
from portal.db import get_session, make_engine
from portal.migrate import upgrade

PASSWORD = "load-benchmark-password"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
GUNICORN_WORKERS = 4


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers=None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on a connection of its own: status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def sign_in(port: int, email: str) -> str:
    """Sign in through the form once; return the session cookie as ``name=value``."""
    _, headers, page = request(port, "GET", "/login")
    cookies = _set_cookies(headers)
    token = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    form = {"email": email, "password": PASSWORD, "csrf_token": token}
    status, headers, _ = request(
        port,
        "POST",
        "/login",
        urllib.parse.urlencode(form).encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        },
    )
    cookies.update(_set_cookies(headers))
    if status != 302 or "session" not in cookies:
        raise SystemExit(f"sign-in failed: {status}")
    return f"session={cookies['session']}"


def _set_cookies(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The cookies a response sets, by name."""
    cookies = {}
    for name, value in headers:
        if name.lower() == "set-cookie":
            key, _, rest = value.partition("=")
            cookies[key] = rest.split(";", 1)[0]
    return cookies


def run_locust(
    port: int, seconds: int, users: dict[str, int], env: dict[str, str], until=None
) -> tuple[dict[str, dict], float]:
    """Run Locust headless with the given users; stop after ``seconds`` or once ``until()``.

    Returns the figures per request name and the measured duration in seconds.
    """
    classes = [name for name, count in users.items() if count]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stats.json"
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                "--host", f"http://127.0.0.1:{port}", "-u", str(sum(users.values())),
                "-r", "10", "--reset-stats", "-t", f"{seconds}s", "--stop-timeout", "5",
                "--json-file", str(out.with_suffix("")),
                "--loglevel", "WARNING", "--only-summary", "--exit-code-on-error", "0",
                *classes,
            ],
            env={**env, **{f"LOAD_{k.upper()}": str(v) for k, v in _env_counts(users).items()}},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        began = time.monotonic()
        while proc.poll() is None:
            if until is not None and until():
                proc.send_signal(signal.SIGTERM)  # Locust stops and writes its stats
                break
            time.sleep(0.1)
        output, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - began
        if not out.exists():
            raise SystemExit(f"locust wrote no statistics:\n{output}")
        entries = json.loads(out.read_text())
    if any(entry["num_failures"] for entry in entries):
        # Locust's own report names each failure (status or exception) and how often.
        report = output[output.find("Error report") :] if "Error report" in output else output
        print(report.strip())
    figures = {}
    for entry in entries:
        count = entry["num_requests"]
        times = {int(k): v for k, v in entry["response_times"].items()}
        figures[entry["name"]] = {
            "requests": count,
            "errors": entry["num_failures"],
            "per_s": round(count / elapsed, 1),
            **{f"p{q}_ms": percentile(times, count, q / 100) for q in (50, 95, 99)},
        }
    return figures, elapsed


def percentile(times: dict[int, int], count: int, q: float) -> int:
    """The q-quantile of a Locust response-time histogram (ms, as Locust rounds them).

    Computed here as Locust's own stats do: importing locust in this process would
    monkey-patch it with gevent.
    """
    wanted = int(count * q)
    seen = 0
    for ms in sorted(times, reverse=True):
        seen += times[ms]
        if count - seen <= wanted:
            return ms
    return 0


def _env_counts(users: dict[str, int]) -> dict[str, int]:
    """The LOAD_* counts bench/locustfile.py reads, from the user-class counts."""
    names = {"RunWatcher": "watchers", "PageUser": "page_users", "ApiClient": "api_clients"}
    return {names[name]: count for name, count in users.items()}


def main() -> None:
    """Set up, measure idle, start a rotation, measure during it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=4, help="run pages polling progress")
    parser.add_argument("--page-users", type=int, default=2, help="compliance page every 2 s")
    parser.add_argument("--api-clients", type=int, default=4, help="4 API requests/s each")
    parser.add_argument("--workers", type=int, default=1, help="RQ worker processes")
    parser.add_argument("--throttle", type=float, default=None, help="max batches/s per worker")
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
        # What autovacuum does to freshly loaded tables: statistics and a visibility map
        # (the compliance page's per-key counts are index-only scans with it).
        with (
            app.extensions["db_engine"]
            .connect()
            .execution_options(isolation_level="AUTOCOMMIT") as conn
        ):
            for table in ("conversations", "messages", "attachments"):
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
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
                    str(GUNICORN_WORKERS),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "portal.cli", "worker", "--count", str(args.workers)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        for _ in range(100):
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        load_env = {
            **os.environ,
            "LOAD_COOKIE": sign_in(port, "admin@load.example"),
            "LOAD_TOKEN": token,
            "LOAD_CONVERSATIONS": ",".join(conv_ids),
        }
        pages = {"PageUser": args.page_users, "ApiClient": args.api_clients}
        idle, idle_s = run_locust(port, args.seconds, {**pages, "RunWatcher": 0}, load_env)
        from portal.models import Organization
        from portal.rotation.models import ACTIVE_RUN_STATES, RotationRun
        from portal.rotation.queue import enqueue_ranges
        from portal.rotation.start import start_rotation

        with app.app_context():
            db = get_session()
            run = start_rotation(db, db.get(Organization, org_id), "bench", b64(old), b64(new))
            run.max_batches_per_second = args.throttle
            db.commit()
            run_id = run.id

        def run_state() -> str:
            with app.app_context():
                return get_session().get(RotationRun, run_id).state

        # Warm-up, not measured: each gunicorn worker's first fragment compiles its queries.
        for _ in range(4 * GUNICORN_WORKERS):
            request(
                port,
                "GET",
                f"/rotations/{run_id}/progress",
                headers={"Cookie": load_env["LOAD_COOKIE"], "HX-Request": "true"},
            )
        enqueue_ranges(app, run_id)
        busy, busy_s = run_locust(
            port,
            args.seconds,
            {**pages, "RunWatcher": args.watchers},
            {**load_env, "LOAD_RUN_ID": str(run_id)},
            until=lambda: run_state() not in ACTIVE_RUN_STATES,
        )
        state_after = run_state()
        errors = {
            "idle": sum(f["errors"] for f in idle.values()),
            "rotation": sum(f["errors"] for f in busy.values()),
        }
        offered = args.watchers + args.page_users / 2 + args.api_clients * 4
        print(f"offered load during the rotation: {offered:.0f} requests/s")
        print(
            f"{'phase':10} {'operation':18} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        )
        for phase, figures in (("idle", idle), ("rotation", busy)):
            for op, fig in sorted(figures.items()):
                print(
                    f"{phase:10} {op:18} {fig['per_s']:8.1f} {fig['p50_ms']:8} "
                    f"{fig['p95_ms']:8} {fig['p99_ms']:8}"
                )
        print(
            f"errors: {errors}; idle phase {idle_s:.1f} s; rotation phase {busy_s:.1f} s, "
            f"the run then {state_after}"
        )
        api_ratio = {
            op: round(busy[op]["p95_ms"] / idle[op]["p95_ms"], 2)
            for op in ("api_read", "api_write")
            if op in busy and op in idle
        }
        progress_p95 = busy.get("progress_fragment", {}).get("p95_ms")
        print(
            f"progress fragment p95 = {progress_p95} ms (target <= 20); "
            f"API p95 rotation/idle = {api_ratio} (target <= 2)"
        )
        targets_met = bool(
            errors == {"idle": 0, "rotation": 0}
            and progress_p95 is not None
            and progress_p95 <= 20
            and api_ratio
            and max(api_ratio.values()) <= 2
        )
        print(
            json.dumps(
                {
                    "bench": "load",
                    "messages": args.messages,
                    "users": {"RunWatcher": args.watchers, **pages},
                    "rq_workers": args.workers,
                    "throttle": args.throttle,
                    "offered_per_s": offered,
                    "idle_seconds": round(idle_s, 1),
                    "rotation_seconds": round(busy_s, 1),
                    "idle": idle,
                    "rotation": busy,
                    "errors": errors,
                    "progress_p95_ms": progress_p95,
                    "api_p95_ratio": api_ratio,
                    "rotation_state": state_after,
                    "targets_met": targets_met,
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
