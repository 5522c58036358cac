"""``byok-portal`` as real processes: the installed script, a pipe and a terminal.

Most CLI tests run in-process (the ``cli`` fixture); these few prove the process itself:
the console script, Flask's commands on it, JSON on standard output, a key through a pipe,
and the hidden prompt on a terminal, where the key must never be echoed.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from importlib.metadata import version

from portal import crypto
from tests.support.faults import start_run
from tests.support.processes import run_cli
from tests.support.rotation import enable_byok, seed
from tests.support.wizard import key_by_fp, new_key


def test_the_installed_script_prints_its_version():
    script = shutil.which("byok-portal")
    assert script, "byok-portal is not installed"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"byok-portal {version('byok-portal')}\n"


def test_routes_lists_the_portal_routes(cli_env):
    result = run_cli(cli_env, "routes")
    assert result.returncode == 0, result.stderr
    assert "compliance.index" in result.stdout and "/settings/compliance" in result.stdout


def test_rotation_list_json_describes_runs_without_key_material(app, cli_env, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=2, attachments=0)
    new = crypto.generate_key()
    run_id = start_run(app, orgs["a"]["id"], old, new)
    result = run_cli(cli_env, "rotation", "list", "--json")
    assert result.returncode == 0, result.stderr
    [run] = json.loads(result.stdout)
    assert set(run) == {
        "id",
        "organization_id",
        "kind",
        "state",
        "percent",
        "done",
        "failed",
        "total",
        "created_at",
    }
    assert (run["id"], run["organization_id"]) == (str(run_id), str(orgs["a"]["id"]))
    assert (run["kind"], run["total"]) == ("rotation", 3)
    for key in (old, new):
        for form in (key.hex(), base64.b64encode(key).decode()):
            assert form not in result.stdout


def test_key_enable_reads_the_key_from_a_pipe(app, cli_env, orgs):
    _, text, fp = new_key()
    result = run_cli(cli_env, "key", "enable", "--org", orgs["a"]["slug"], stdin=text + "\n")
    assert result.returncode == 0, result.stderr
    assert fp in result.stdout and text not in result.stdout + result.stderr
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "active"


def _read_until(fd: int, wanted: bytes, seen: bytearray, deadline: float) -> bool:
    """Read a terminal into ``seen`` until ``wanted`` shows, it closes or time runs out."""
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the terminal has closed
            return wanted in seen
        if not chunk:
            break
        seen.extend(chunk)
    return wanted in seen


def test_key_enable_prompts_for_the_key_without_echo_on_a_terminal(app, cli_env, orgs):
    _, text, fp = new_key()
    command = [sys.executable, "-m", "portal.cli", "key", "enable", "--org", orgs["a"]["slug"]]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: its standard streams are the terminal
        os.execve(sys.executable, command, {**os.environ, **cli_env})  # noqa: S606
    seen = bytearray()
    try:
        deadline = time.monotonic() + 120
        assert _read_until(terminal, b"Key: ", seen, deadline), seen.decode(errors="replace")
        os.write(terminal, text.encode() + b"\n")
        _read_until(terminal, b"\x00never", seen, deadline)  # everything until it exits
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    output = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert f"BYOK enabled for {orgs['a']['slug']} with key {fp}" in output
    assert text not in output  # the terminal did not echo the key, nor did the command
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "active"
