"""``byok-portal demo``: a working portal on the embedded default from one command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.models import Organization

DEMO_ORGS = (
    ("Solo Community", "community"),
    ("Acme Org Community", "org_community"),
    ("Globex Dedicated", "dedicated"),
    ("Initech On-Premise", "on_prem"),
)
DEMO_ROLES = ("admin", "auditor", "member")
SUPPORT_EMAIL = "support@platform.example"
TOPICS = ("Quarterly plan", "Support escalation", "Product ideas")
CONVERSATION_ITEMS = 25  # a conversation and its messages
# Measured on the embedded default with the demo's worker, on two cores shared with other
# work: a rotation moves 6,000 to 7,000 items a second (100,000 in 14 s, 120,000 in 21 s),
# and seeding writes 8,000 to 10,000 a second. 120,000 keep the run page moving for about
# 20 s and the demo's first start under 30 s.
DEFAULT_ITEMS = 120_000
FEW_ITEMS = 19  # three conversations of five messages, and a file


def _logins_file(home: Path) -> Path:
    """Where the demo's generated passwords are kept (mode 0600, demo only)."""
    return home / "demo-logins.json"


def _load_logins(home: Path) -> dict[str, str]:
    """Return the demo logins created earlier, if any."""
    try:
        return json.loads(_logins_file(home).read_text())
    except FileNotFoundError:
        return {}


def _save_logins(home: Path, logins: dict[str, str]) -> None:
    """Store the demo logins readable by the owner only."""
    path = _logins_file(home)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(logins, handle, indent=2)


@dataclass(frozen=True)
class Login:
    """One demo sign-in, and its organisation with the organisation's tier."""

    email: str
    password: str
    organisation: str


def seed(app: Flask, items: int = DEFAULT_ITEMS) -> list[Login]:
    """Create the demo organisations and users unless they exist; return the logins.

    A new organisation that may switch BYOK on later (Organization Community) gets ``items``
    items, enough to watch a rotation's progress; one without BYOK (Community) a few; the
    isolated tiers none, as they store nothing before BYOK is on.
    """
    from portal.auth.services import create_user
    from portal.db import get_session
    from portal.keys.policy import byok_eligible, byok_required
    from portal.models import User
    from portal.orgs import create_org, slugify

    home = Path(app.config["BYOK_HOME"])
    logins = _load_logins(home)
    db = get_session()
    wanted: list[tuple[str, str, Organization | None, str]] = []
    for name, tier in DEMO_ORGS:
        org = db.scalar(select(Organization).where(Organization.slug == slugify(name)))
        if org is None:
            org = create_org(db, name, tier)
            if not byok_required(org):
                count = items if byok_eligible(org) else FEW_ITEMS
                started = time.monotonic()
                say(f"seeding {name}: {count} items...")
                seed_chat(db, org, count)
                db.commit()
                say(f"seeded {name} in {time.monotonic() - started:.1f} s")
        for role in DEMO_ROLES:
            wanted.append((f"{role}@{org.slug}.example", role, org, _heading(org)))
    wanted.append((SUPPORT_EMAIL, "support", None, _heading(None)))
    shown = []
    missing = {w[0] for w in wanted if db.scalar(select(User.id).where(User.email == w[0])) is None}
    if missing:
        say(f"creating {len(missing)} demo users (each password hash takes a moment)...")
    for email, role, org, heading in wanted:
        if email in missing:
            password = secrets.token_urlsafe(12)
            create_user(db, email, password, role, org)
            logins[email] = password
        if email in logins:  # one created elsewhere has a password the demo does not know
            shown.append(Login(email, logins[email], heading))
    db.commit()
    _save_logins(home, logins)
    return shown


def seed_chat(db: Session, org: Organization, items: int) -> None:
    """Write ``items`` items: conversations of up to 25 items, the first with a file.

    Each value is encrypted as the data API does it (same check, keyring and associated
    data), then rows go in by bulk insert: thousands of them in a second or two.
    """
    from portal.chat import service
    from portal.chat.models import Attachment, Conversation, Message
    from portal.keys.policy import check_can_store
    from portal.keys.service import encrypting_keyring

    check_can_store(db, org)
    ring = encrypting_keyring(db, org.id)
    key_id = ring.encrypting_key_id.hex()

    def seal(table: str, column: str, row_id: uuid.UUID, data: bytes) -> bytes:
        return bytes(ring.encrypt(data, service.ad(org.id, table, column, row_id)))

    rows: dict[type, list[dict[str, Any]]] = {Conversation: [], Message: [], Attachment: []}
    at = datetime.now(UTC)
    left, n = items, 0
    while left > 0:
        n += 1
        topic = TOPICS[(n - 1) % len(TOPICS)]
        conv_id = uuid.uuid4()
        meta = json.dumps({"channel": "demo", "n": n}, separators=(",", ":")).encode()
        rows[Conversation].append(
            {
                "id": conv_id,
                "company_id": org.id,
                "key_id": key_id,
                "title_ct": seal("conversations", "title", conv_id, f"{topic} #{n}".encode()),
                "metadata_ct": seal("conversations", "metadata", conv_id, meta),
                "created_at": at,
            }
        )
        left -= 1
        if n == 1 and left > 0:
            att_id, notes = uuid.uuid4(), f"Notes for {org.name}.\n".encode()
            rows[Attachment].append(
                {
                    "id": att_id,
                    "company_id": org.id,
                    "conversation_id": conv_id,
                    "key_id": key_id,
                    "filename_ct": seal("attachments", "filename", att_id, b"notes.txt"),
                    "content_ct": seal("attachments", "content", att_id, notes),
                    "content_type": "text/plain",
                    "size": len(notes),
                    "created_at": at,
                }
            )
            left -= 1
        for i in range(min(CONVERSATION_ITEMS - 1, left)):
            msg_id, author = uuid.uuid4(), ("user", "assistant")[i % 2]
            body = f"{topic} #{n}: message {i + 1} from the {author}.".encode()
            at += timedelta(microseconds=1)  # keeps each conversation's messages in order
            rows[Message].append(
                {
                    "id": msg_id,
                    "company_id": org.id,
                    "conversation_id": conv_id,
                    "key_id": key_id,
                    "author": author,
                    "body_ct": seal("messages", "body", msg_id, body),
                    "created_at": at,
                }
            )
            left -= 1
    for model, values in rows.items():  # conversations first: the others refer to them
        if values:
            db.execute(model.__table__.insert(), values)


STOP_GRACE_SECONDS = 10.0  # how long the worker and Redis get to stop before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(line: str = "") -> None:
    """Print a line; once nobody reads the demo's output any more, drop it and carry on.

    ``byok-portal demo | tee log`` and Ctrl-C kill tee first, and a closed terminal answers
    EIO: neither may keep the demo from stopping what it started.
    """
    try:
        print(line, flush=True)
    except OSError:  # EPIPE (BrokenPipeError), or EIO from a hung-up terminal
        _discard_output()


def _discard_output() -> None:
    """Point stdout, and stderr where it is the same pipe or terminal, at /dev/null."""
    out = sys.stdout.fileno()
    gone = os.fstat(out)
    err = os.fstat(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, out)
    if (err.st_dev, err.st_ino) == (gone.st_dev, gone.st_ino):
        os.dup2(devnull, 2)
    os.close(devnull)


def _relay(stream: IO[bytes]) -> None:
    """Copy a child's output to the demo's, so that only the demo ever meets a gone reader."""
    for line in iter(stream.readline, b""):
        say(line.decode(errors="replace").rstrip("\n"))


def _parent_death_signal() -> Callable[[], None] | None:
    """Return a pre-exec function asking Linux to SIGTERM the child if the demo dies (even
    by SIGKILL, which leaves it no time to stop anything); None elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
    return lambda: prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


class Children:
    """What the demo starts, each a process group of its own, outside the terminal's.

    Ctrl-C then reaches the demo alone, which stops the worker before Redis, each with
    SIGTERM and a grace period, then kills each group, so that nothing started below them
    (RQ work horses, the scheduler, the watchdog) outlives the demo.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._preexec = _parent_death_signal()

    def start(
        self, command: list[str], relay: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start a command in a new process group; ``relay`` copies its output to the demo's."""
        output = subprocess.PIPE if relay else subprocess.DEVNULL
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            process_group=0,
            env=env,
            preexec_fn=self._preexec,  # safe: the demo starts its children before any thread
        )
        self.procs.append(proc)
        if relay:
            threading.Thread(target=_relay, args=(proc.stdout,), daemon=True).start()
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM a child, give it the grace period, then SIGKILL its whole group."""
        try:
            os.kill(proc.pid, signal.SIGTERM)  # not terminate(): that may reap the child
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while not _exited(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            # Still unreaped, the leader's pid cannot be reused: the group is still its own.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop_all(self) -> None:
        """Stop every child, the most recently started first."""
        for proc in reversed(self.procs):
            self.stop(proc)


def _exited(pid: int) -> bool:
    """Tell whether a child has exited, leaving it unreaped."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def run_demo(host: str, port: int, items: int = DEFAULT_ITEMS) -> None:
    """Initialise, seed, serve the portal and a worker, print the logins; stop on a signal."""
    from werkzeug.serving import make_server

    from portal import create_app
    from portal.redis_conn import connect, ensure_embedded, stop_embedded
    from portal.setup import initialise

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # From here on SIGTERM and SIGHUP unwind like Ctrl-C, so whatever was started gets stopped.
    for signum in STOP_SIGNALS[1:]:
        signal.signal(signum, _stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a gone reader is EPIPE, handled by say()
    children = Children()
    app = server = None
    status = 0
    found_redis = False  # an embedded Redis of an earlier run, not started by this one
    try:
        app = create_app()
        home = Path(app.config["BYOK_HOME"])
        with app.app_context():
            for line in initialise(app):
                say(line)
            logins = seed(app, items)
        if _embedded(app):
            app.config["REDIS_URL"] = ensure_embedded(home, spawn=children.start)
            found_redis = not children.procs
        connect(app)
        env = dict(os.environ, REDIS_URL=app.config["REDIS_URL"], BYOK_HOME=str(home))
        children.start([sys.executable, "-m", "portal.cli", "worker"], relay=True, env=env)
        try:
            server = make_server(host, port, app, threaded=True)
        except OSError as exc:
            say(f"cannot serve on {host}:{port}: {exc.strerror}")
            status = 1
        else:
            _print_logins(f"http://{host}:{port}/", logins)
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the stopping short
            signal.signal(signum, signal.SIG_IGN)
        embedded = app is not None and _embedded(app)
        say("stopping: web server, worker" + (", embedded Redis" if embedded else ""))
        if server is not None:
            server.server_close()
        children.stop_all()
        if found_redis:
            stop_embedded(Path(app.config["BYOK_HOME"]))
        say("stopped")
    if status:
        raise SystemExit(status)


def _embedded(app: Flask) -> bool:
    """Tell whether the app runs on the embedded Redis."""
    return bool(app.config.get("REDIS_EMBEDDED"))


def _print_logins(url: str, logins: list[Login]) -> None:
    """Print the portal's address and every demo login, under its organisation and tier."""
    say()
    say(f"byok-portal demo is running at {url}")
    say("Sign in with one of these (passwords are kept in the instance folder):")
    heading = None
    for login in logins:
        if login.organisation != heading:
            heading = login.organisation
            say(f"  {heading}")
        say(f"    {login.email:<42} {login.password}")
    say("Press Ctrl-C to stop.")


def _heading(org: Organization | None) -> str:
    """Name an organisation, its tier and what the tier means for BYOK (ASCII only)."""
    from portal.keys.policy import byok_eligible, byok_required

    if org is None:
        return "Platform support: no organisation; watches every organisation's rotations"
    if byok_required(org):
        byok = "BYOK required before any data is stored"
    elif byok_eligible(org):
        byok = "BYOK available; data so far under a platform key"
    else:
        byok = "no BYOK: platform key only"
    return f"{org.name} - {org.tier_label} tier: {byok}"
