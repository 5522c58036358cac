"""``byok-portal key connect / status / rotate`` with keys in a real key service (issue #13).

The service is real (OpenBao Transit for most tests; SoftHSM2 and moto's KMS for one connect
each). The command runs in-process on the test's app, whose settings point at the service.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from portal.chat.kinds import all_kinds
from portal.db import get_session
from portal.keys import policy
from portal.keys.wrapped import unwrap_row
from tests.support.cli import Ran
from tests.support.keyservices import RunningKeyService
from tests.support.rotation import b64, enable_byok, key_ids, plaintext_digest, run_worker, seed
from tests.support.wizard import events, new_key, org_keys


def pointed_at(service: RunningKeyService, app_config: dict) -> RunningKeyService:
    """Point the app (not created yet) at the service; revocation and outages bite at once."""
    app_config.update(service.config, KMS_CACHE_SECONDS=1, KMS_BREAKER_SECONDS=0)
    return service


@pytest.fixture
def vault(app_config: dict, vault_service: RunningKeyService) -> RunningKeyService:
    """OpenBao Transit, with the app pointed at it (list it before ``app`` and ``cli``)."""
    return pointed_at(vault_service, app_config)


def connect(cli: Callable[..., Ran], slug: str, provider: str, ref: str) -> dict:
    """Run ``key connect --json``; return what it printed."""
    result = cli(
        "key", "connect", "--org", slug, "--provider", provider, "--key-ref", ref, "--json"
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def status(cli: Callable[..., Ran], slug: str) -> dict:
    """Return ``key status --json`` of an organisation."""
    result = cli("key", "status", "--org", slug, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def data_key(app: Flask, org_id: uuid.UUID) -> bytes:
    """The active external key's data key, unwrapped by the service (for the leak checks)."""
    with app.app_context():
        return unwrap_row(policy.active_key(get_session(), org_id))


def ciphertexts(app: Flask, org_id: uuid.UUID) -> dict[tuple[str, str], tuple]:
    """Every encrypted item's key id and ciphertext columns, by kind and id."""
    out = {}
    with app.app_context():
        db = get_session()
        for kind in all_kinds():
            model = kind.model
            columns = [getattr(model, attr) for attr in ("id", "key_id", *kind.ct_columns)]
            for row in db.execute(select(*columns).where(model.company_id == org_id)):
                out[kind.name, str(row[0])] = tuple(bytes(v) for v in row[2:]) + (row[1],)
    return out


def test_key_connect_enables_a_vault_key_and_prints_no_key_material(vault, app, cli, orgs, leaks):
    ref = vault.new_key()
    info = connect(cli, orgs["a"]["slug"], "vault-transit", ref)
    assert (info["custody"], info["key_ref"], info["role_arn"]) == ("vault-transit", ref, None)
    assert (info["state"], info["origin"]) == ("active", "external")
    assert info["organization"] == orgs["a"]["slug"]
    assert info["version"] and info["detail"]
    [row] = [k for k in org_keys(app, orgs["a"]["id"]) if k.origin == "external"]
    assert (row.fingerprint, row.key_ref, row.state) == (info["fingerprint"], ref, "active")
    assert len(events(app, "BYOK.key_service_test", orgs["a"]["id"], "success")) == 1
    assert len(events(app, "BYOK.enabled", orgs["a"]["id"], "success")) == 1
    plain = cli(
        "key",
        "connect",
        "--org",
        orgs["b"]["slug"],
        "--provider",
        "vault-transit",
        "--key-ref",
        vault.new_key(),
    )
    assert plain.returncode == 0, plain.stderr
    assert f"BYOK enabled for {orgs['b']['slug']} with key " in plain.stdout
    assert "custody: vault-transit, key " in plain.stdout and "version " in plain.stdout
    keys = [data_key(app, orgs[o]["id"]) for o in ("a", "b")]
    said = json.dumps(info) + plain.stdout + plain.stderr
    assert leaks.text(keys, said) == []
    token = vault.config.get("VAULT_TOKEN")
    assert not token or token not in said


def test_key_connect_refuses_a_key_the_service_does_not_have(vault, app, cli, orgs):
    missing = "no-such-key-" + uuid.uuid4().hex[:8]
    result = cli(
        "key",
        "connect",
        "--org",
        orgs["a"]["slug"],
        "--provider",
        "vault-transit",
        "--key-ref",
        missing,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: ") and missing in result.stderr
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] in ([], ["platform"])
    [refused] = events(app, "BYOK.key_service_test", orgs["a"]["id"], "failure")
    assert json.loads(refused.details)["reason"] == "key_access_revoked"
    assert events(app, "BYOK.enabled", orgs["a"]["id"]) == []


@pytest.mark.parametrize("running", ["pkcs11_service", "kms_service"])
def test_key_connect_with_an_hsm_and_a_cloud_kms(request, app_config, running):
    service = pointed_at(request.getfixturevalue(running), app_config)
    cli, orgs = request.getfixturevalue("cli"), request.getfixturevalue("orgs")
    ref = service.new_key()
    info = connect(cli, orgs["a"]["slug"], service.provider, ref)
    assert (info["custody"], info["key_ref"], info["origin"]) == (service.provider, ref, "external")
    shown = status(cli, orgs["a"]["slug"])
    assert (shown["custody"], shown["key_ref"], shown["key_service"]) == (
        service.provider,
        ref,
        "reachable",
    )
    assert shown["active_fingerprint"] == info["fingerprint"]


def test_key_status_of_a_sealed_key_names_no_key_service(app, cli, orgs):
    enable_byok(app, orgs["a"]["id"])
    shown = status(cli, orgs["a"]["slug"])
    assert (shown["custody"], shown["key_ref"], shown["key_service"]) == ("sealed", None, None)
    text = cli("key", "status", "--org", orgs["a"]["slug"]).stdout
    assert "custody: sealed" in text and "key service" not in text


def test_key_status_says_reachable_denied_then_unreachable(vault, app, cli, orgs):
    slug, ref = orgs["a"]["slug"], vault.new_key()
    connect(cli, slug, "vault-transit", ref)
    shown = status(cli, slug)
    assert (shown["custody"], shown["key_ref"], shown["key_service"]) == (
        "vault-transit",
        ref,
        "reachable",
    )
    assert shown["key_service_detail"]["version"]
    text = cli("key", "status", "--org", slug).stdout
    assert f"custody: vault-transit, Transit key name {ref}\n" in text
    for line in ("key service: reachable, version ", "last success: ", "cache expires: "):
        assert line in text, text
    vault.revoke(ref)
    try:
        assert status(cli, slug)["key_service"] == "denied"
        assert "key service: denied" in cli("key", "status", "--org", slug).stdout
    finally:
        vault.restore(ref)
    assert status(cli, slug)["key_service"] == "reachable"
    vault.stop()
    try:
        assert status(cli, slug)["key_service"] == "unreachable"
        assert "key service: unreachable" in cli("key", "status", "--org", slug).stdout
    finally:
        vault.start()
    assert status(cli, slug)["key_service"] == "reachable"


def test_rewrap_after_rotating_in_the_service_touches_no_data_row(vault, app, cli, orgs, leaks):
    org_id, slug, ref = orgs["a"]["id"], orgs["a"]["slug"], vault.new_key()
    connect(cli, slug, "vault-transit", ref)
    seed(app, org_id, conversations=2, messages=3, attachments=1)
    rows_before, read_before = ciphertexts(app, org_id), plaintext_digest(app, org_id)
    [before] = [k for k in org_keys(app, org_id) if k.external]
    assert b"vault:v1:" in bytes(before.sealed)
    vault.rotate(ref)
    result = cli("key", "rotate", "--org", slug, "--rewrap")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("re-wrapped 1 data key ") and f"key {ref} version 2" in (
        result.stdout
    )
    [after] = [k for k in org_keys(app, org_id) if k.external]
    assert (after.key_id, after.key_ref) == (before.key_id, ref)
    assert b"vault:v2:" in bytes(after.sealed)
    assert ciphertexts(app, org_id) == rows_before
    assert plaintext_digest(app, org_id) == read_before
    [event] = events(app, "BYOK.key_rewrapped", org_id, "success")
    assert json.loads(event.details)["keys"] == 1
    assert leaks.text([data_key(app, org_id)], result.stdout + result.stderr) == []


def test_rewrap_under_a_new_key_ref_leaves_the_old_key_unneeded(vault, app, cli, orgs):
    org_id, slug, old_ref = orgs["a"]["id"], orgs["a"]["slug"], vault.new_key()
    connect(cli, slug, "vault-transit", old_ref)
    seed(app, org_id, conversations=1, messages=2, attachments=0)
    rows_before, read_before = ciphertexts(app, org_id), plaintext_digest(app, org_id)
    new_ref = vault.new_key()
    result = cli("key", "rotate", "--org", slug, "--rewrap", "--key-ref", new_ref)
    assert result.returncode == 0, result.stderr
    assert f"under vault-transit key {new_ref}" in result.stdout
    assert [k.key_ref for k in org_keys(app, org_id) if k.external] == [new_ref]
    vault.revoke(old_ref)  # the data keys are wrapped by the new key alone now
    try:
        assert plaintext_digest(app, org_id) == read_before
    finally:
        vault.restore(old_ref)
    assert ciphertexts(app, org_id) == rows_before
    assert status(cli, slug)["key_ref"] == new_ref


def test_rewrap_of_a_sealed_key_is_refused_and_audited(app, cli, orgs):
    enable_byok(app, orgs["a"]["id"])
    result = cli("key", "rotate", "--org", orgs["a"]["slug"], "--rewrap")
    assert (result.returncode, result.stdout) == (1, "")
    assert "full rotation" in result.stderr
    [refused] = events(app, "BYOK.key_rewrapped", orgs["a"]["id"], "failure")
    assert json.loads(refused.details)["reason"] == "not_external"


def finish(app: Flask, cli: Callable[..., Ran], result: Ran) -> dict:
    """Check a run was started and printed; work it off in-process; return its summary."""
    assert result.returncode == 0, result.stderr
    [run] = json.loads(cli("rotation", "list", "--json").stdout)
    assert result.stdout == f"{run['id']}\n"
    run_worker(app)
    [run] = json.loads(cli("rotation", "list", "--json").stdout)
    return run


def test_full_reencryption_from_a_sealed_key_to_vault(vault, app, cli, orgs, leaks):
    org_id, slug, ref = orgs["a"]["id"], orgs["a"]["slug"], vault.new_key()
    old = enable_byok(app, org_id)
    seed(app, org_id, conversations=2, messages=3, attachments=1)
    read_before = plaintext_digest(app, org_id)
    result = cli(
        "key",
        "rotate",
        "--org",
        slug,
        "--to-provider",
        "vault-transit",
        "--key-ref",
        ref,
        stdin=b64(old) + "\n",
    )
    run = finish(app, cli, result)
    assert (run["state"], run["done"], run["failed"]) == ("completed", run["total"], 0)
    active = status(cli, slug)
    assert (active["custody"], active["key_ref"]) == ("vault-transit", ref)
    [new] = [k for k in org_keys(app, org_id) if k.external]
    assert key_ids(app, org_id) == {new.key_id}
    assert plaintext_digest(app, org_id) == read_before
    assert leaks.text([old, data_key(app, org_id)], result.stdout + result.stderr) == []


def test_full_reencryption_from_vault_to_a_sealed_key_reads_only_the_new_key(
    vault, app, cli, orgs, leaks
):
    org_id, slug = orgs["a"]["id"], orgs["a"]["slug"]
    connect(cli, slug, "vault-transit", vault.new_key())
    seed(app, org_id, conversations=1, messages=3, attachments=1)
    read_before, old = plaintext_digest(app, org_id), data_key(app, org_id)
    new, new_text, fp = new_key()
    result = cli("key", "rotate", "--org", slug, "--to-sealed", stdin=new_text + "\n")
    run = finish(app, cli, result)
    assert (run["state"], run["failed"]) == ("completed", 0)
    active = status(cli, slug)
    assert (active["custody"], active["key_ref"], active["active_fingerprint"]) == (
        "sealed",
        None,
        fp,
    )
    assert plaintext_digest(app, org_id) == read_before
    assert leaks.text([old, new], result.stdout + result.stderr) == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--rewrap", "--to-sealed"],
        ["--rewrap", "--to-provider", "vault-transit", "--key-ref", "k"],
        ["--to-sealed", "--to-provider", "pkcs11", "--key-ref", "k"],
        ["--to-provider", "aws-kms"],
        ["--to-sealed", "--key-ref", "k"],
        ["--key-ref", "k"],
        ["--role-arn", "arn:aws:iam::123456789012:role/byok"],
        ["--rewrap", "--role-arn", "arn:aws:iam::123456789012:role/byok"],
        ["--to-provider", "gcp-kms", "--key-ref", "k"],
    ],
)
def test_key_rotate_refuses_contradictory_flags(app, cli, orgs, flags):
    old = enable_byok(app, orgs["a"]["id"])
    keys_before = [(k.key_id, k.state) for k in org_keys(app, orgs["a"]["id"])]
    _, new_text, _ = new_key()
    result = cli(
        "key", "rotate", "--org", orgs["a"]["slug"], *flags, stdin=f"{b64(old)}\n{new_text}\n"
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "Error:" in result.stderr
    assert json.loads(cli("rotation", "list", "--json").stdout) == []
    assert [(k.key_id, k.state) for k in org_keys(app, orgs["a"]["id"])] == keys_before
