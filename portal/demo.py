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
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flask import Flask
from sqlalchemy import select

from portal.models import Organization

DEMO_ORGS = (
    ("Solo Community", "community"),
    ("Acme Org Community", "org_community"),
    ("Globex Dedicated", "dedicated"),
    ("Initech On-Premise", "on_prem"),
)
DEMO_ROLES = ("admin", "auditor", "member")
SUPPORT_EMAIL = "support@platform.example"


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


def seed(app: Flask) -> dict[str, str]:
    """Create the demo organisations and users unless they exist; return the logins."""
    from portal.auth.services import create_user
    from portal.db import get_session
    from portal.keys.policy import byok_required
    from portal.models import User
    from portal.orgs import create_org, slugify

    home = Path(app.config["BYOK_HOME"])
    logins = _load_logins(home)
    db = get_session()
    wanted: list[tuple[str, str, Organization | None]] = []
    for name, tier in DEMO_ORGS:
        org = db.scalar(select(Organization).where(Organization.slug == slugify(name)))
        if org is None:
            org = create_org(db, name, tier)
            if not byok_required(org):  # isolated tiers store nothing before BYOK is on
                seed_chat(db, org)
        for role in DEMO_ROLES:
            wanted.append((f"{role}@{org.slug}.example", role, org))
    wanted.append((SUPPORT_EMAIL, "support", None))
    for email, role, org in wanted:
        exists = db.scalar(select(User.id).where(User.email == email))
        if exists and email in logins:
            continue
        if exists:  # created elsewhere: its password is unknown to the demo
            continue
        password = secrets.token_urlsafe(12)
        create_user(db, email, password, role, org)
        logins[email] = password
    db.commit()
    _save_logins(home, logins)
    return logins


def seed_chat(db, org: Organization) -> None:
    """Write a few conversations through the same service code the data API uses."""
    from portal.chat import service

    for n, topic in enumerate(("Quarterly plan", "Support escalation", "Product ideas"), 1):
        conv = service.create_conversation(db, org.id, topic, {"channel": "demo", "n": n})
        for i in range(5):
            author = "user" if i % 2 == 0 else "assistant"
            service.add_message(db, conv, author, f"{topic}: message {i + 1} from the {author}.")
        if n == 1:
            service.add_attachment(
                db, conv, "notes.txt", "text/plain", f"Notes for {org.name}.\n".encode()
            )


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


def run_demo(host: str, port: int) -> None:
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
            logins = seed(app)
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


def _print_logins(url: str, logins: dict[str, str]) -> None:
    """Print the portal's address and every demo login."""
    say()
    say(f"byok-portal demo is running at {url}")
    say("Sign in with one of these (passwords are kept in the instance folder):")
    for email, password in logins.items():
        say(f"  {email:<44} {password}")
    say("Press Ctrl-C to stop.")
