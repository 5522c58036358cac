"""Child processes that stop with the one that started them, and output that survives its
reader: what ``byok-portal demo`` needs to leave nothing behind, whatever happens to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

STOP_GRACE_SECONDS = 10.0  # how long the worker and Redis get to stop before SIGKILL


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
