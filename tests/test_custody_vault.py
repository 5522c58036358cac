"""Vault / OpenBao Transit custody against a real OpenBao server (keyservice_vault.py)."""

from __future__ import annotations

import secrets
import socket
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial

import pytest

from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.client import KeyServiceClient
from portal.keys.custody.keyservice import KeyRef, wrap_context
from portal.keys.custody.vault_transit import VaultTransit, start
from tests.support.keyservice_vault import OpenBao

CONTEXT = wrap_context(41, "a1" * 16)
OTHER_ORG = wrap_context(42, "a1" * 16)


def _client(config: dict, **kwargs: object) -> KeyServiceClient:
    """The portal's client for the Transit service of config, without the data-key cache."""
    service = start(config)
    assert isinstance(service, VaultTransit)
    return KeyServiceClient(service, cache_seconds=0, **kwargs)


def _ref(name: str) -> KeyRef:
    """A reference to a Transit key."""
    return KeyRef("vault-transit", name)


def _refused(kind: type[CustodyError], call: Callable[[], object], *secret: object) -> Exception:
    """Run call, expect exactly kind, and check no secret shows in the error or its traceback."""
    with pytest.raises(CustodyError) as caught:
        call()
    exc = caught.value
    assert type(exc) is kind, repr(exc)
    shown = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    for value in secret:
        texts = [value] if isinstance(value, str) else [value.hex(), repr(value)[2:-1]]
        assert not any(text and text in shown for text in texts), "a secret leaked"
    return exc


@pytest.fixture
def vault(vault_service: OpenBao) -> OpenBao:
    """The OpenBao server, fixture-typed for the tests below."""
    return vault_service


@pytest.fixture
def client(vault: OpenBao) -> KeyServiceClient:
    """The portal's client, holding the byok-portal token (never the root token)."""
    return _client(vault.config)


@pytest.fixture
def key(vault: OpenBao) -> KeyRef:
    """A fresh aes256-gcm96 Transit key."""
    return _ref(vault.new_key())


@pytest.fixture
def data_key() -> bytes:
    """A data key as the portal makes them."""
    return secrets.token_bytes(32)


def test_wrap_and_unwrap_round_trip(client: KeyServiceClient, key: KeyRef, data_key: bytes) -> None:
    """A wrapped data key is a Transit ciphertext and unwraps to the same bytes."""
    wrapped = client.wrap(key, data_key, CONTEXT)
    assert wrapped.startswith(b"vault:v1:") and data_key not in wrapped
    assert client.unwrap(key, wrapped, CONTEXT) == data_key


@pytest.mark.parametrize("derived", [False, True], ids=["associated-data", "derived"])
def test_another_organisations_context_is_refused(
    vault: OpenBao, client: KeyServiceClient, data_key: bytes, derived: bool
) -> None:
    """A wrap copied to another organisation does not open there: an integrity error."""
    key = _ref(vault.new_key(derived=derived))
    wrapped = client.wrap(key, data_key, CONTEXT)
    _refused(CustodyError, lambda: client.unwrap(key, wrapped, OTHER_ORG), data_key)
    tampered = wrapped[:20] + (b"B" if wrapped[20:21] == b"A" else b"A") + wrapped[21:]
    _refused(CustodyError, lambda: client.unwrap(key, tampered, CONTEXT), data_key)
    _refused(CustodyError, lambda: client.unwrap(key, b"\xff not transit", CONTEXT))
    assert client.health().state == "reachable"


def test_revoked_key_is_refused_until_restored(
    vault: OpenBao, client: KeyServiceClient, key: KeyRef, data_key: bytes
) -> None:
    """The customer denying the key in the policy bites at once; restoring it undoes that."""
    wrapped = client.wrap(key, data_key, CONTEXT)
    vault.revoke(key.ref)
    try:
        token = vault.config["VAULT_TOKEN"]
        call = partial(client.unwrap, key, wrapped, CONTEXT)
        assert key.ref in str(_refused(KeyAccessRevoked, call, data_key, token))
        _refused(KeyAccessRevoked, lambda: client.wrap(key, data_key, CONTEXT), data_key)
        assert client.health().state == "denied"
    finally:
        vault.restore(key.ref)
    assert client.unwrap(key, wrapped, CONTEXT) == data_key


def test_version_below_min_decryption_version_is_revoked(
    vault: OpenBao, client: KeyServiceClient, key: KeyRef, data_key: bytes
) -> None:
    """Raising min_decryption_version above a wrap's version revokes it."""
    wrapped = client.wrap(key, data_key, CONTEXT)
    vault.raise_min_decryption_version(key.ref)
    exc = _refused(KeyAccessRevoked, lambda: client.unwrap(key, wrapped, CONTEXT), data_key)
    assert "min_decryption_version" in str(exc)
    vault.restore(key.ref)
    assert client.unwrap(key, wrapped, CONTEXT) == data_key


@pytest.mark.parametrize("derived", [False, True], ids=["associated-data", "derived"])
def test_rewrap_after_rotation_uses_the_new_version(
    vault: OpenBao, client: KeyServiceClient, data_key: bytes, derived: bool
) -> None:
    """After a rotation in Vault, rewrap moves the data key to v2 under the same key."""
    key = _ref(vault.new_key(derived=derived))
    wrapped = client.wrap(key, data_key, CONTEXT)
    vault.rotate(key.ref)
    rewrapped = client.rewrap(key, wrapped, CONTEXT, key)
    assert rewrapped.startswith(b"vault:v2:")
    assert client.unwrap(key, rewrapped, CONTEXT) == data_key
    _refused(CustodyError, lambda: client.unwrap(key, rewrapped, OTHER_ORG), data_key)
    if derived:
        # Transit rewrap itself: a token that may not decrypt can still move it to v2.
        rewrap_only = _client(vault.rewrap_only_config)
        assert rewrap_only.rewrap(key, wrapped, CONTEXT, key).startswith(b"vault:v2:")


def test_rewrap_to_another_key(
    vault: OpenBao, client: KeyServiceClient, key: KeyRef, data_key: bytes
) -> None:
    """Rewrap to a different key name: the new key opens it, the old one does not."""
    other = _ref(vault.new_key(derived=True))
    moved = client.rewrap(key, client.wrap(key, data_key, CONTEXT), CONTEXT, other)
    assert client.unwrap(other, moved, CONTEXT) == data_key
    _refused(CustodyError, lambda: client.unwrap(key, moved, CONTEXT), data_key)


def test_describe_shows_the_version(vault: OpenBao, client: KeyServiceClient) -> None:
    """Describe reads the key's type and versions afresh."""
    key = _ref(vault.new_key(derived=True))
    vault.rotate(key.ref)
    info = client.describe(key)
    assert info.version == "2"
    assert info.detail == "aes256-gcm96, latest version 2, decrypts from version 1, derived"


def test_key_that_cannot_encrypt_is_refused(vault: OpenBao, client: KeyServiceClient) -> None:
    """A signing key is named as such: an error, not a revocation."""
    key = _ref(vault.new_key(key_type="ed25519"))
    exc = _refused(CustodyError, lambda: client.describe(key))
    assert "ed25519" in str(exc) and "cannot encrypt" in str(exc)


def test_unknown_key_is_revoked(client: KeyServiceClient, data_key: bytes) -> None:
    """A key name Vault does not know is refused, and the wrap creates no key."""
    key = _ref("no-such-key")
    exc = _refused(KeyAccessRevoked, lambda: client.wrap(key, data_key, CONTEXT), data_key)
    assert str(exc) == "Transit key 'no-such-key' not found"
    _refused(KeyAccessRevoked, lambda: client.describe(key))


def test_stopped_server_is_unreachable_then_breaker_then_back(
    vault: OpenBao, key: KeyRef, data_key: bytes
) -> None:
    """A killed server fails fast; the breaker then answers alone; after it, calls work."""
    now = [1000.0]
    client = _client(vault.config, breaker_seconds=10, clock=lambda: now[0])
    wrapped = client.wrap(key, data_key, CONTEXT)
    vault.stop()
    try:
        began = time.monotonic()
        call = partial(client.unwrap, key, wrapped, CONTEXT)
        _refused(KeyServiceUnreachable, call, data_key, vault.config["VAULT_TOKEN"])
        assert time.monotonic() - began < vault.config["KMS_TIMEOUT_SECONDS"]
    finally:
        vault.start()
    # The server is back, so only the open breaker can refuse this call.
    exc = _refused(KeyServiceUnreachable, lambda: client.unwrap(key, wrapped, CONTEXT))
    assert "not retried" in str(exc) and client.health().state == "unreachable"
    now[0] += 11
    assert client.unwrap(key, wrapped, CONTEXT) == data_key
    assert client.health().state == "reachable"


def test_silent_server_times_out_as_unreachable() -> None:
    """A server that accepts the connection but never answers costs one KMS_TIMEOUT_SECONDS."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        config = {"VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_TOKEN": "s.x"}
        client = _client({**config, "KMS_TIMEOUT_SECONDS": 1})
        began = time.monotonic()
        exc = _refused(KeyServiceUnreachable, client.ping, "s.x")
        assert "timed out" in str(exc) and time.monotonic() - began < 2


def test_sealed_server_is_unreachable(vault: OpenBao, client: KeyServiceClient) -> None:
    """A sealed Vault answers 503: unreachable, not revoked."""
    vault.seal()
    try:
        _refused(KeyServiceUnreachable, client.ping)
    finally:
        vault.unseal()


def test_approle_logs_in_again_after_its_token_expires(
    vault: OpenBao, key: KeyRef, data_key: bytes
) -> None:
    """AppRole: a token Vault no longer accepts means one new login; a denied key stays denied."""
    client = _client(vault.approle_config)
    secret_id = vault.approle_config["VAULT_SECRET_ID"]
    wrapped = client.wrap(key, data_key, CONTEXT)
    vault.expire_approle_logins()
    assert client.unwrap(key, wrapped, CONTEXT) == data_key
    vault.revoke(key.ref)
    try:
        _refused(KeyAccessRevoked, lambda: client.unwrap(key, wrapped, CONTEXT), secret_id)
    finally:
        vault.restore(key.ref)
    wrong = {**vault.approle_config, "VAULT_SECRET_ID": "0" * 36}
    exc = _refused(KeyAccessRevoked, _client(wrong).ping, secret_id, "0" * 36)
    assert "AppRole" in str(exc)


def test_ping_and_a_refused_token(vault: OpenBao, client: KeyServiceClient) -> None:
    """Ping proves the token works; a token Vault does not know is refused, never shown."""
    client.ping()
    bad = "s." + secrets.token_hex(12)
    _refused(KeyAccessRevoked, _client({**vault.config, "VAULT_TOKEN": bad}).ping, bad)
    assert vault.config["VAULT_TOKEN"] not in repr(client.service)


def test_start_reads_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not configured is None; configured without credentials or without hvac is an error."""
    assert start({"VAULT_TOKEN": "x"}) is None
    with pytest.raises(CustodyError, match="VAULT_ROLE_ID"):
        start({"VAULT_ADDR": "http://127.0.0.1:9"})
    # Started without contacting Vault: nothing listens on the discard port.
    assert start({"VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "x"}) is not None
    monkeypatch.setitem(sys.modules, "hvac", None)
    with pytest.raises(CustodyError, match=r"byok-portal\[vault\]"):
        start({"VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "x"})


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("byok-1.main_key", True),
        ("", False),
        ("a/b", False),
        ("a b", False),
        ("..", False),
        ("k" * 128, True),
        ("k" * 129, False),
    ],
)
def test_check_ref(ref: str, ok: bool) -> None:
    """Key names are Transit names: no slashes, spaces or path tricks, 128 characters at most."""
    service = start({"VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "x"})
    assert (service.check_ref(ref) is None) is ok
