"""Real processes: the ``byok-portal`` command, the demo server, free ports, Chromium's path."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Demo:
    """A running ``byok-portal demo`` process and what it printed."""

    process: object
    url: str
    logins: dict[str, str]
    output: list[str]


def start_demo(env: dict[str, str]) -> Demo:
    """Start the real ``byok-portal demo`` command and wait until it prints its logins."""
    import subprocess
    import sys
    import threading
    import time

    port = free_port()
    proc = subprocess.Popen(
        # A few items: the default (sized for watching a rotation) takes many seconds to seed.
        [sys.executable, "-m", "portal.cli", "demo", "--port", str(port), "--items", "40"],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    ).start()
    deadline = time.monotonic() + 60
    while not any("Press Ctrl-C" in line for line in lines):
        assert proc.poll() is None, "demo exited early:\n" + "".join(lines)
        assert time.monotonic() < deadline, "demo did not start:\n" + "".join(lines)
        time.sleep(0.1)
    logins = dict(
        m.groups() for m in (re.match(r"^\s+(\S+@\S+)\s+(\S+)$", line) for line in lines) if m
    )
    return Demo(proc, f"http://127.0.0.1:{port}", logins, lines)


def stop_demo(demo: Demo) -> int:
    """Stop a demo with SIGTERM and return its exit status."""
    if demo.process.poll() is None:
        demo.process.terminate()
    return demo.process.wait(timeout=30)


def run_cli(
    env: dict,
    *args: str,
    stdin: str | None = None,
    timeout: float = 120,
    inherit: bool = True,
    cwd: Path | None = None,
):
    """Run ``byok-portal`` (as ``python -m portal.cli``) as its own process: with extra
    environment over this one's, or (``inherit=False``) with exactly ``env``."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "portal.cli", *args],
        env={**os.environ, **env} if inherit else env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
