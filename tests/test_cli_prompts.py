"""Keys typed at a terminal: hidden prompts, and the key never in what the command prints.

In-process, "a terminal" is ``stdin_is_terminal`` answering yes; click's runner then
answers the hidden prompts from its input without echoing it, as a real terminal would
(test_cli_smoke types a key into a real pseudo-terminal).
"""

from __future__ import annotations

import json

import pytest

from portal.cli import common
from tests.support.rotation import b64, enable_byok, seed
from tests.support.wizard import events, key_by_fp, new_key


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make standard input look like a terminal to the command."""
    monkeypatch.setattr(common, "stdin_is_terminal", lambda: True)


def test_key_enable_prompts_for_the_key_and_does_not_echo_it(app, cli, orgs, terminal):
    _, text, fp = new_key()
    result = cli("key", "enable", "--org", orgs["a"]["slug"], stdin=text + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("Key: ")
    assert result.stdout == f"BYOK enabled for {orgs['a']['slug']} with key {fp} (imported)\n"
    assert text not in result.stdout + result.stderr
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "active"


def test_key_rotate_prompts_for_both_keys_and_prints_only_the_run_id(app, cli, orgs, terminal):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=1, attachments=0)
    _, new_text, _ = new_key()
    typed = f"{b64(old)}\n{new_text}\n"
    result = cli("key", "rotate", "--org", orgs["a"]["slug"], stdin=typed)
    assert result.returncode == 0, result.stderr
    assert "Current key: " in result.stderr and "New key: " in result.stderr
    for secret in (b64(old), new_text):
        assert secret not in result.stdout + result.stderr
    [run] = json.loads(cli("rotation", "list", "--json").stdout)
    assert result.stdout == f"{run['id']}\n"
    started = events(app, "BYOK.rotation_started", orgs["a"]["id"], "success")
    assert len(started) == 1


def test_key_rotate_from_a_pipe_needs_two_lines(app, cli, orgs):
    enable_byok(app, orgs["a"]["id"])
    _, text, _ = new_key()
    result = cli("key", "rotate", "--org", orgs["a"]["slug"], stdin=text + "\n")
    assert result.returncode == 1
    assert result.stderr == (
        "error: give the current key and the new key, one per line, on standard input\n"
    )
    assert json.loads(cli("rotation", "list", "--json").stdout) == []
