"""``byok-portal demo``: it stops everything it started, whatever happens to its output."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support.processes import free_port

START_SECONDS = 90  # a demo start on two shared cores, seeding included
STOP_SECONDS = 45
ITEMS = ("--items", "40")  # a few: these tests are about processes, not data


def _demo_env(home: Path) -> dict[str, str]:
    """The environment of a demo on the embedded default in ``home``."""
    return {"BYOK_HOME": str(home), "DATABASE_URL": "", "REDIS_URL": "", "BYOK_MASTER_KEY": ""}


def _processes_of(home: Path) -> dict[int, str]:
    """Every live process whose environment names this demo's instance folder.

    Whatever the demo starts inherits ``BYOK_HOME``, so this finds the worker supervisor,
    RQ workers and their work horses, and the watchdog, wherever they have been reparented;
    redis-server rewrites its environment for its process title, which names its socket.
    """
    marker = f"BYOK_HOME={home}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue
        if (marker in environ or str(home).encode() in cmdline) and state != "Z":
            found[int(entry)] = cmdline.decode(errors="replace").strip()
    return found


def _wait_until_workers_listen(home: Path, log: Path, proc: subprocess.Popen) -> dict[int, str]:
    """Wait until the demo printed its logins and its RQ worker is registered in Redis."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        text = log.read_text() if log.exists() else ""
        assert proc.poll() is None, "demo exited early:\n" + text
        if "Press Ctrl-C" in text and (home / "redis.sock").exists():
            try:
                client = redis.Redis(unix_socket_path=str(home / "redis.sock"), socket_timeout=2)
                if client.scard("rq:workers"):
                    break
            except redis.RedisError:
                pass
        assert time.monotonic() < deadline, "demo did not start:\n" + text
        time.sleep(0.2)
    running = _processes_of(home)
    commands = " | ".join(running.values())
    assert "redis-server" in commands and "portal.cli worker" in commands, commands
    return running


def _wait_until_gone(home: Path) -> dict[int, str]:
    """Wait until nothing of the demo runs any more; return whatever is still left."""
    deadline = time.monotonic() + STOP_SECONDS
    while (left := _processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _kill_leftovers(left: dict[int, str]) -> None:
    """Kill what a failed test left behind, so that it does not outlive the test run."""
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_demo_piped_to_tee_stops_everything_on_ctrl_c(tmp_path):
    home = tmp_path / "home"
    log, errors = tmp_path / "demo.log", tmp_path / "demo.err"
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in _demo_env(home).items())
    demo = shlex.join(
        [sys.executable, "-m", "portal.cli", "demo", "--port", str(free_port()), *ITEMS]
    )
    # A terminal's foreground job: the shell, the demo and tee in one process group.
    pipeline = subprocess.Popen(
        ["sh", "-c", f"{assignments} {demo} 2>{shlex.quote(str(errors))} | tee {log}"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    left: dict[int, str] = {}
    try:
        running = _wait_until_workers_listen(home, log, pipeline)
        os.killpg(pipeline.pid, signal.SIGINT)  # Ctrl-C: tee dies at the same moment
        left = _wait_until_gone(home)
        assert not left, f"left running after Ctrl-C: {left} (started: {running})"
        pipeline.wait(timeout=10)
        assert "Traceback" not in errors.read_text(), errors.read_text()
    finally:
        _kill_leftovers(left or _processes_of(home))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_stops_everything_on_a_signal_after_its_reader_has_gone(tmp_path, signum):
    home = tmp_path / "home"
    log, errors = tmp_path / "demo.log", tmp_path / "demo.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "portal.cli", "demo", "--port", str(free_port()), *ITEMS],
            env={**os.environ, **_demo_env(home)},
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    left: dict[int, str] = {}
    try:
        with log.open("wb") as copy:
            for line in proc.stdout:
                copy.write(line)
                if b"Press Ctrl-C" in line:
                    break
        proc.stdout.close()  # the reader goes away: the demo's next print meets EPIPE
        running = _wait_until_workers_listen(home, log, proc)
        shown = log.read_text()
        assert "seeding Acme Org Community: 40 items" in shown
        assert "  Globex Dedicated - Dedicated tier: BYOK required" in shown
        proc.send_signal(signum)
        assert proc.wait(timeout=STOP_SECONDS) == 0, errors.read_text()
        left = _wait_until_gone(home)
        assert not left, f"left running after {signum.name}: {left} (started: {running})"
        assert "Traceback" not in errors.read_text(), errors.read_text()
    finally:
        _kill_leftovers(left or _processes_of(home))
        if proc.poll() is None:
            proc.kill()


def _items_per_org(app) -> dict[str, tuple[int, set[str]]]:
    """Count each demo organisation's items, and the key ids they are under, by slug."""
    from sqlalchemy import func, select

    from portal.chat.models import Attachment, Conversation, Message
    from portal.db import get_session
    from portal.models import Organization

    db = get_session()
    counts = {}
    for org in db.scalars(select(Organization)):
        total, keys = 0, set()
        for model in (Conversation, Message, Attachment):
            rows = db.execute(
                select(model.key_id, func.count())
                .where(model.company_id == org.id)
                .group_by(model.key_id)
            )
            for key_id, count in rows:
                total += count
                keys.add(key_id)
        counts[org.slug] = (total, keys)
    return counts


def test_items_option_seeds_that_many_items_readable_through_the_data_path(app):
    from sqlalchemy import select

    from portal.chat.models import Attachment, Conversation, Message
    from portal.chat.service import Reader
    from portal.db import get_session
    from portal.demo import seed
    from portal.keys.policy import active_key
    from portal.models import Organization

    with app.app_context():
        seed(app, 57)
        counts = _items_per_org(app)
        assert {slug: total for slug, (total, _keys) in counts.items()} == {
            "acme-org-community": 57,  # Organization Community: BYOK may be switched on later
            "solo-community": 19,  # Community: no BYOK, so only a few
            "globex-dedicated": 0,  # isolated tiers store nothing before BYOK is on
            "initech-on-premise": 0,
        }
        db = get_session()
        acme = db.scalar(select(Organization).where(Organization.slug == "acme-org-community"))
        assert counts["acme-org-community"][1] == {active_key(db, acme.id).key_id}
        reader = Reader(db, acme.id)
        bodies = [
            reader.column(m, "body")
            for m in db.scalars(
                select(Message).where(Message.company_id == acme.id).order_by(Message.created_at)
            )
        ]
        titles = [
            reader.column(c, "title")
            for c in db.scalars(select(Conversation).where(Conversation.company_id == acme.id))
        ]
        (attachment,) = db.scalars(select(Attachment).where(Attachment.company_id == acme.id))
        assert reader.column(attachment, "filename") == (b"notes.txt")
        assert len(titles) == 3 and len(bodies) == 57 - 3 - 1
        assert bodies[0] == b"Quarterly plan #1: message 1 from the user."
        seed(app, 500)  # a second start reuses the organisations and adds nothing
        assert _items_per_org(app)["acme-org-community"][0] == 57


def test_printed_logins_stand_under_their_organisation_and_its_tier(app, capsys):
    from portal.demo import _print_logins, seed

    with app.app_context():
        logins = seed(app, 0)
    capsys.readouterr()
    _print_logins("http://127.0.0.1:5000/", logins)
    lines = capsys.readouterr().out.splitlines()
    tiers = {
        "solo-community": "Community (personal) tier: no BYOK",
        "acme-org-community": "Organization Community tier: BYOK available",
        "globex-dedicated": "Dedicated tier: BYOK required",
        "initech-on-premise": "On-Premise tier: BYOK required",
        "platform": "Platform support",
    }
    heading, seen = "", {}
    for line in lines:
        if line.startswith("    ") and "@" in line:
            email, _password = line.split()
            seen[email] = heading
        elif line.startswith("  "):
            heading = line.strip()
    assert len(seen) == 13, lines
    for email, under in seen.items():
        domain = email.split("@")[1].removesuffix(".example")
        assert tiers[domain] in under, (email, under)
