"""``byok-portal key ...``: the wizard's operations for scripted installs (run in-process).

Same service code as the web wizard, so the same checks, messages and audit events (actor
``cli``); a refusal exits non-zero with the message on standard error.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask

from portal.chat.models import Message
from tests.support.api import Api
from tests.support.cli import Ran
from tests.support.html import by_testid, feedback
from tests.support.leaks import scan_database
from tests.support.web import PASSWORD
from tests.support.wizard import (
    INVALID_KEYS,
    REQUIRED_MESSAGE,
    add_org,
    events,
    key_by_fp,
    key_id_of,
    new_key,
    org_keys,
    platform_key_ids,
    sign_in,
)


def status(cli: Callable[..., Ran], slug: str) -> dict:
    """Return ``key status --json`` of an organisation."""
    result = cli("key", "status", "--org", slug, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def enable(cli: Callable[..., Ran], slug: str, text: str) -> Ran:
    """Run ``key enable`` with a key on standard input."""
    return cli("key", "enable", "--org", slug, stdin=text)


def cli_events(app: Flask, action: str, company_id, outcome: str | None = None) -> list:
    """Return the audit events of an action, checking each was recorded as the CLI."""
    found = events(app, action, company_id, outcome)
    assert all((e.actor_type, e.actor_label) == ("cli", "cli") for e in found), [
        (e.actor_type, e.actor_label) for e in found
    ]
    return found


def test_key_status_json_describes_keys_fingerprints_states_origins_and_items(app, cli, orgs):
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation()
    api.message(conv, "one")
    before = status(cli, orgs["a"]["slug"])
    assert before["byok_enabled"] is False
    assert before["organization"] == orgs["a"]["slug"]
    [platform] = before["keys"]
    assert (platform["state"], platform["origin"], platform["items"]) == ("active", "platform", 2)
    assert before["active_fingerprint"] == platform["fingerprint"]
    _, text, fp = new_key()
    assert enable(cli, orgs["a"]["slug"], text + "\n").returncode == 0
    api.message(conv, "two")
    after = status(cli, orgs["a"]["slug"])
    assert after["byok_enabled"] is True
    assert after["active_fingerprint"] == fp
    by_fp = {k["fingerprint"]: k for k in after["keys"]}
    assert (by_fp[fp]["state"], by_fp[fp]["origin"], by_fp[fp]["items"]) == (
        "active",
        "imported",
        1,
    )
    assert by_fp[platform["fingerprint"]]["state"] == "decrypt_only"
    assert by_fp[platform["fingerprint"]]["items"] == 2
    assert after["rotation_due"] and after["rotation_overdue"] is False
    human = cli("key", "status", "--org", orgs["a"]["slug"])
    assert human.returncode == 0
    assert "BYOK: on" in human.stdout
    assert f"active key: {fp}" in human.stdout
    assert "next rotation due:" in human.stdout


def test_key_enable_reads_the_key_from_stdin_and_enables_it_as_cli(app, cli, orgs):
    key, text, fp = new_key()
    result = enable(cli, orgs["a"]["slug"], text + "\n")
    assert result.returncode == 0, result.stderr
    assert fp in result.stdout
    assert text not in result.stdout + result.stderr
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.origin, row.created_by) == ("active", "imported", "cli")
    tests = cli_events(app, "BYOK.key_test", orgs["a"]["id"])
    assert [json.loads(e.details) for e in tests] == [{"fingerprint": fp}]
    enabled = cli_events(app, "BYOK.enabled", orgs["a"]["id"])
    assert [json.loads(e.details) for e in enabled] == [{"fingerprint": fp, "origin": "imported"}]
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation()
    assert key_id_of(app, Message, api.message(conv, "new")) == row.key_id
    assert scan_database(app, [key]) == []
    # The web status panel shows the same key, enabled by the CLI.
    html = sign_in(app, orgs["users"]["admin_a"]).page()
    assert by_testid(html, "active-fingerprint") == fp
    assert "by cli" in html


@pytest.mark.parametrize("text", [t for _, t, _ in INVALID_KEYS], ids=[i for i, *_ in INVALID_KEYS])
def test_key_enable_refuses_a_bad_key_with_the_web_message_on_stderr(app, cli, orgs, text):
    result = enable(cli, orgs["a"]["slug"], text)
    assert result.returncode == 1
    assert result.stdout == ""
    failed = cli_events(app, "BYOK.key_test", orgs["a"]["id"])
    assert [e.outcome for e in failed] == ["failure"]
    web = sign_in(app, orgs["users"]["admin_a"]).test_key(text)
    assert web.status_code == 422
    message = feedback(web.get_data(as_text=True), "enable", "key")
    assert result.stderr == f"error: {message}\n"
    if text.strip():
        assert text.strip() not in result.stderr
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


def test_key_enable_refuses_a_key_used_before_and_a_second_key_while_on(app, cli, orgs):
    _, text, _ = new_key()
    assert enable(cli, orgs["a"]["slug"], text).returncode == 0
    _, other, _ = new_key()
    again = enable(cli, orgs["a"]["slug"], other)
    assert again.returncode == 1
    assert "BYOK is already enabled" in again.stderr
    assert cli("key", "disable", "--org", orgs["a"]["slug"], "--i-understand").returncode == 0
    reused = enable(cli, orgs["a"]["slug"], text)
    assert reused.returncode == 1
    assert "used by your organisation before" in reused.stderr


def test_key_commands_refuse_community_accounts_and_unknown_organisations(app, cli, password_hash):
    org = add_org(app, password_hash, "community")
    _, text, _ = new_key()
    refused = enable(cli, org["slug"], text)
    assert refused.returncode == 1
    assert "not available for Community" in refused.stderr
    unknown = enable(cli, "no-such-org", text)
    assert unknown.returncode == 1
    assert "no organisation with slug 'no-such-org'" in unknown.stderr
    assert cli("key", "status", "--org", "no-such-org").returncode == 1


def test_key_disable_needs_i_understand_then_new_data_uses_a_platform_key(app, cli, orgs):
    slug = orgs["a"]["slug"]
    key, text, fp = new_key()
    assert enable(cli, slug, text).returncode == 0
    without = cli("key", "disable", "--org", slug)
    assert without.returncode != 0
    assert "--i-understand" in without.stderr
    assert status(cli, slug)["byok_enabled"] is True
    done = cli("key", "disable", "--org", slug, "--i-understand")
    assert done.returncode == 0, done.stderr
    after = status(cli, slug)
    assert after["byok_enabled"] is False
    assert {k["fingerprint"]: k["state"] for k in after["keys"]}[fp] == "decrypt_only"
    api = Api.for_org(app, orgs["a"]["id"])
    msg = api.message(api.conversation(), "after disable")
    assert key_id_of(app, Message, msg) in platform_key_ids(app, orgs["a"]["id"])
    disabled = cli_events(app, "BYOK.disabled", orgs["a"]["id"], "success")
    assert [json.loads(e.details)["fingerprint"] for e in disabled] == [fp]
    refused = cli_events(app, "BYOK.disabled", orgs["a"]["id"], "failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "not_acknowledged"}]


@pytest.mark.parametrize("tier", ["dedicated", "on_prem"])
def test_key_disable_is_refused_where_byok_is_required(app, cli, password_hash, tier):
    org = add_org(app, password_hash, tier)
    _, text, fp = new_key()
    assert enable(cli, org["slug"], text).returncode == 0
    refused = cli("key", "disable", "--org", org["slug"], "--i-understand")
    assert refused.returncode == 1
    assert REQUIRED_MESSAGE in refused.stderr
    assert status(cli, org["slug"])["active_fingerprint"] == fp


def test_key_lost_then_restore_from_stdin_accepts_only_a_key_the_organisation_had(app, cli, orgs):
    slug = orgs["a"]["slug"]
    _, text, fp = new_key()
    assert enable(cli, slug, text).returncode == 0
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation()
    api.message(conv, "kept")
    needs_flag = cli("key", "lost", "--org", slug)
    assert needs_flag.returncode != 0 and "--i-understand" in needs_flag.stderr
    lost = cli("key", "lost", "--org", slug, "--i-understand")
    assert lost.returncode == 0, lost.stderr
    assert api.bodies(conv)[0]["status"] == "unreadable"
    _, stranger, stranger_fp = new_key()
    wrong = cli("key", "restore", "--org", slug, stdin=stranger + "\n")
    assert wrong.returncode == 1
    assert f"No key of your organisation has fingerprint {stranger_fp}" in wrong.stderr
    assert stranger not in wrong.stderr
    right = cli("key", "restore", "--org", slug, stdin=text + "\n")
    assert right.returncode == 0, right.stderr
    assert fp in right.stdout
    assert api.bodies(conv) == ["kept"]
    assert status(cli, slug)["active_fingerprint"] == fp
    assert len(cli_events(app, "encryption_key.declared_lost", orgs["a"]["id"], "success")) == 1
    refused = cli_events(app, "encryption_key.declared_lost", orgs["a"]["id"], "failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "not_acknowledged"}]
    outcomes = [e.outcome for e in cli_events(app, "encryption_key.restore", orgs["a"]["id"])]
    assert outcomes == ["failure"]
    assert len(cli_events(app, "encryption_key.restored", orgs["a"]["id"])) == 1


def test_key_revoke_destroys_the_sealed_copy_until_key_restore(app, cli, orgs):
    slug = orgs["a"]["slug"]
    key, text, fp = new_key()
    assert enable(cli, slug, text).returncode == 0
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation()
    api.message(conv, "before")
    revoked = cli("key", "revoke", "--org", slug)
    assert revoked.returncode == 0, revoked.stderr
    assert key_by_fp(app, orgs["a"]["id"], fp).sealed is None
    assert {k["fingerprint"]: k["state"] for k in status(cli, slug)["keys"]}[fp] == ("unavailable")
    assert api.bodies(conv)[0]["status"] == "unreadable"
    assert api.post_message(conv, "blocked").status_code == 503
    again = cli("key", "revoke", "--org", slug)
    assert again.returncode == 1 and "no BYOK key to revoke" in again.stderr
    restored = cli("key", "restore", "--org", slug, stdin=text)
    assert restored.returncode == 0, restored.stderr
    assert api.bodies(conv) == ["before"]
    assert len(cli_events(app, "encryption_key.revoked", orgs["a"]["id"], "success")) == 1
    refused = cli_events(app, "encryption_key.revoked", orgs["a"]["id"], "failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "not_enabled"}]
    assert scan_database(app, [key]) == []


def test_cli_and_web_wizard_share_state_and_the_password_is_not_needed_on_the_cli(app, cli, orgs):
    """The CLI is for operators with access to the installation: no portal password."""
    slug = orgs["a"]["slug"]
    wizard = sign_in(app, orgs["users"]["admin_a"])
    _, text, fp = new_key()
    wizard.enable_ok(text)
    assert status(cli, slug)["active_fingerprint"] == fp
    assert cli("key", "revoke", "--org", slug).returncode == 0
    html = wizard.page()
    assert "restore-form" in html
    restored = wizard.post("restore", {"key": text, "password": PASSWORD})
    assert restored.status_code == 200
    assert status(cli, slug)["active_fingerprint"] == fp
