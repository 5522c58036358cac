"""The pkcs11 key service against a real SoftHSM2 token, through the portal's KeyServiceClient."""

from __future__ import annotations

import os
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from portal.keys.custody import KeyRef
from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.client import KeyServiceClient
from portal.keys.custody.keyservice import wrap_context
from portal.keys.custody.pkcs11_hsm import MAGIC, PKCS11KeyService, start

DATA_KEY = bytes(range(32))
CONTEXT = wrap_context("c0ffee00-0000-4000-8000-000000000001", "ab" * 16)
OTHER_ORG = wrap_context("c0ffee00-0000-4000-8000-000000000002", "ab" * 16)


@pytest.fixture
def client(pkcs11_service) -> KeyServiceClient:
    """The provider behind the portal's client, with the data-key cache off."""
    return KeyServiceClient(start(pkcs11_service.config), cache_seconds=0)


@pytest.fixture
def ref(pkcs11_service) -> KeyRef:
    """A fresh AES key on the token."""
    return KeyRef("pkcs11", pkcs11_service.new_key())


def test_start_without_a_module_is_not_configured() -> None:
    """PKCS11_MODULE empty or unset: the provider is not offered."""
    assert start({}) is None
    assert start({"PKCS11_MODULE": "", "PKCS11_PIN": "1234"}) is None


def test_start_refuses_a_module_without_a_pin(pkcs11_service) -> None:
    """A module without a PIN setting is configured but unusable."""
    with pytest.raises(CustodyError, match="PKCS11_PIN"):
        start({**pkcs11_service.config, "PKCS11_PIN": None})


def test_a_data_key_round_trips_through_the_token(client, ref) -> None:
    """Wrap stores P11G, nonce, ciphertext and tag; a fresh nonce each time."""
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    assert wrapped.startswith(MAGIC) and len(wrapped) == 5 + 12 + 32 + 16
    assert client.wrap(ref, DATA_KEY, CONTEXT) != wrapped
    assert client.unwrap(ref, wrapped, CONTEXT) == DATA_KEY


def test_another_organisations_context_fails_the_integrity_check(client, ref) -> None:
    """The context is GCM associated data: another organisation's fails, as integrity."""
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    with pytest.raises(CustodyError, match="integrity") as caught:
        client.unwrap(ref, wrapped, OTHER_ORG)
    assert type(caught.value) is CustodyError
    assert client.health().state == "reachable"


def test_an_altered_wrapped_key_fails_the_integrity_check(client, ref) -> None:
    """A flipped bit or a truncated blob is refused, never decrypted."""
    wrapped = bytearray(client.wrap(ref, DATA_KEY, CONTEXT))
    wrapped[-1] ^= 1
    with pytest.raises(CustodyError, match="integrity"):
        client.unwrap(ref, bytes(wrapped), CONTEXT)
    with pytest.raises(CustodyError, match="not a data key"):
        client.unwrap(ref, b"P11G\x01short", CONTEXT)


def test_a_relabelled_key_is_revoked_until_its_label_returns(pkcs11_service, client, ref) -> None:
    """No key under the label on a token that answers is a revocation."""
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    pkcs11_service.revoke(ref.ref)
    with pytest.raises(KeyAccessRevoked, match=f"'{ref.ref}' not found on token 'byok'"):
        client.unwrap(ref, wrapped, CONTEXT)
    assert client.health().state == "denied"
    pkcs11_service.restore(ref.ref)
    assert client.unwrap(ref, wrapped, CONTEXT) == DATA_KEY


def test_a_key_that_may_not_decrypt_is_revoked(pkcs11_service, client, ref) -> None:
    """CKA_DECRYPT cleared by the customer is a revocation too."""
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    pkcs11_service.forbid_decrypt(ref.ref)
    with pytest.raises(KeyAccessRevoked, match="not permitted"):
        client.unwrap(ref, wrapped, CONTEXT)
    with pytest.raises(KeyAccessRevoked, match="not permitted to decrypt"):
        client.describe(ref)
    pkcs11_service.allow_decrypt(ref.ref)
    assert client.unwrap(ref, wrapped, CONTEXT) == DATA_KEY


def test_two_keys_with_one_label_are_refused(pkcs11_service, client, ref) -> None:
    """An ambiguous label is refused and said to be one."""
    pkcs11_service.new_key(label=ref.ref)
    with pytest.raises(CustodyError, match="2 AES keys have this label") as caught:
        client.wrap(ref, DATA_KEY, CONTEXT)
    assert type(caught.value) is CustodyError


def test_an_extractable_key_wraps_nothing(pkcs11_service, client) -> None:
    """A key that could leave the HSM is refused for new wraps."""
    ref = KeyRef("pkcs11", pkcs11_service.new_key(extractable=True))
    with pytest.raises(CustodyError, match="extractable"):
        client.wrap(ref, DATA_KEY, CONTEXT)


def test_a_wrong_pin_is_revoked_and_a_pin_file_works(pkcs11_service, ref) -> None:
    """PIN refused: revoked, without the PIN in the message; the PIN file logs in."""
    # New processes: PKCS#11 login is per process, and this one is logged in already.
    wrong = pkcs11_service.probe({**pkcs11_service.config, "PKCS11_PIN": "wrong-4242"}, ref.ref)
    assert wrong.startswith("KeyAccessRevoked") and "PinIncorrect" in wrong
    assert "wrong-4242" not in wrong
    assert pkcs11_service.probe(pkcs11_service.pin_file_config(), ref.ref).startswith("ok ")


def test_an_unreachable_token_opens_the_breaker(pkcs11_service, ref) -> None:
    """Token gone: unreachable, then the breaker answers until its pause ends."""
    now = [1000.0]
    client = KeyServiceClient(start(pkcs11_service.config), 0, 10, clock=lambda: now[0])
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    pkcs11_service.stop()
    try:
        with pytest.raises(KeyServiceUnreachable, match="token 'byok' did not answer"):
            client.unwrap(ref, wrapped, CONTEXT)
        assert start(pkcs11_service.config) is not None  # a portal starts without its HSM
    finally:
        pkcs11_service.start()
    # The token is back, but the breaker answers for it until its pause is over.
    with pytest.raises(KeyServiceUnreachable, match="did not answer recently"):
        client.unwrap(ref, wrapped, CONTEXT)
    assert client.health().state == "unreachable"
    now[0] += 11
    assert client.unwrap(ref, wrapped, CONTEXT) == DATA_KEY
    client.ping()


def test_rewrap_moves_a_data_key_to_another_label(pkcs11_service, client, ref) -> None:
    """Rewrap to another label, or the same one with a fresh nonce."""
    new_ref = KeyRef("pkcs11", pkcs11_service.new_key())
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    moved = client.rewrap(ref, wrapped, CONTEXT, new_ref)
    assert client.unwrap(new_ref, moved, CONTEXT) == DATA_KEY
    with pytest.raises(CustodyError, match="integrity"):
        client.unwrap(ref, moved, CONTEXT)
    again = client.rewrap(ref, wrapped, CONTEXT, ref)
    assert again != wrapped and client.unwrap(ref, again, CONTEXT) == DATA_KEY


def test_describe_names_the_key_and_its_protection(client, ref) -> None:
    """Version is the key's CKA_ID; the detail says size, token and protection."""
    info = client.describe(ref)
    assert len(info.version) == 16 and int(info.version, 16) >= 0
    assert info.detail == "AES-256 on token 'byok', sensitive, not extractable"


def test_no_error_shows_the_pin_or_the_data_key(pkcs11_service, client, ref) -> None:
    """Messages, reprs and tracebacks hold neither the PIN nor the data key."""
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    errors: list[BaseException] = []
    for call in (
        lambda: client.unwrap(ref, wrapped, OTHER_ORG),
        lambda: client.unwrap(KeyRef("pkcs11", "no-such-key"), wrapped, CONTEXT),
        lambda: client.rewrap(ref, wrapped, OTHER_ORG, ref),
    ):
        with pytest.raises(CustodyError) as caught:
            call()
        errors.append(caught.value)
    shown = [str(e) + repr(e) + "".join(traceback.format_exception(e)) for e in errors]
    shown += [repr(client), repr(client.service), repr(pkcs11_service)]
    for secret in (pkcs11_service.pin, DATA_KEY.hex(), repr(DATA_KEY)):
        assert not [text for text in shown if secret in text]


def test_check_ref_accepts_labels_only(client) -> None:
    """Labels are 1 to 128 printable characters without spaces at the ends."""
    assert client.check_ref("portal-key 1") is None
    for bad in ("", " lead", "trail ", "x" * 129, "tab\tin"):
        assert client.check_ref(bad), bad


def test_one_session_serves_two_threads(client, ref) -> None:
    """Two threads share the process's one session through its lock."""
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: client.unwrap(ref, wrapped, CONTEXT), range(40)))
    assert results == [DATA_KEY] * 40


def test_a_forked_child_opens_a_session_of_its_own(client, ref) -> None:
    """A forked worker opens its own session instead of the parent's."""
    service: PKCS11KeyService = client.service
    wrapped = client.wrap(ref, DATA_KEY, CONTEXT)
    parents = service._session
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: an RQ work-horse or a gunicorn worker
        try:
            key = service.unwrap(ref, wrapped, CONTEXT)
            os.write(write, key + (b"new" if service._session is not parents else b"old"))
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 64) == DATA_KEY + b"new"
    os.waitpid(pid, 0)
    assert service.unwrap(ref, wrapped, CONTEXT) == DATA_KEY
