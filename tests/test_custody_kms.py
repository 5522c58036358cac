"""AWS KMS provider against the real moto_server: wrap, context binding, revocation, roles,
an unreachable endpoint and the breaker (fixture: tests/support/keyservice_kms.py)."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import uuid

import pytest

from portal.keys.custody import aws_kms
from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.client import KeyServiceClient
from portal.keys.custody.keyservice import KeyRef, wrap_context

CTX = wrap_context(41, "ab" * 16)


def client(kms_service, **kwargs) -> KeyServiceClient:
    """The provider started from the fixture's settings, without the data-key cache."""
    return KeyServiceClient(aws_kms.start(kms_service.config), cache_seconds=0, **kwargs)


def ref_of(arn: str, **role) -> KeyRef:
    """A KMS key reference."""
    return KeyRef("aws-kms", arn, **role)


def test_round_trip(kms_service):
    """A wrapped data key unwraps to the same bytes, and the blob is KMS's, not the key."""
    kms, ref, key = client(kms_service), ref_of(kms_service.new_key()), secrets.token_bytes(32)
    wrapped = kms.wrap(ref, key, CTX)
    assert key not in wrapped
    assert kms.unwrap(ref, wrapped, CTX) == key


def test_other_organisations_context_is_refused(kms_service):
    """moto binds the encryption context (AES-GCM associated data), so this proves it."""
    kms, ref = client(kms_service), ref_of(kms_service.new_key())
    wrapped = kms.wrap(ref, secrets.token_bytes(32), CTX)
    with pytest.raises(CustodyError, match="InvalidCiphertextException") as refused:
        kms.unwrap(ref, wrapped, wrap_context(42, CTX["key_id"]))
    assert type(refused.value) is CustodyError
    assert kms.health().state == "reachable"


def test_revoked_key_is_refused_and_restored_key_works(kms_service):
    """revoke() disables the key (and drops its alias: moto ignores the disabling)."""
    kms, arn, key = client(kms_service), kms_service.new_key(), secrets.token_bytes(32)
    wrapped = kms.wrap(ref_of(arn), key, CTX)
    kms_service.revoke(arn)
    try:
        with pytest.raises(KeyAccessRevoked, match=arn):
            kms.unwrap(ref_of(arn), wrapped, CTX)
        assert kms.health().state == "denied"
    finally:
        kms_service.restore(arn)
    assert kms.unwrap(ref_of(arn), wrapped, CTX) == key


def test_describe_refuses_a_disabled_key(kms_service):
    """DescribeKey reports the state, which the provider checks (moto's Encrypt does not)."""
    key_arn = kms_service.key_arn(kms_service.new_key())
    kms_service.revoke(key_arn)
    with pytest.raises(KeyAccessRevoked, match="Disabled"):
        client(kms_service).describe(ref_of(key_arn))


def test_unknown_key_arn_is_revoked(kms_service):
    """A key ARN that does not exist: KMS says NotFound, which names the ARN."""
    arn = f"arn:aws:kms:us-east-1:123456789012:key/{uuid.uuid4()}"
    with pytest.raises(KeyAccessRevoked, match="NotFoundException") as refused:
        client(kms_service).wrap(ref_of(arn), secrets.token_bytes(32), CTX)
    assert arn in str(refused.value)


def test_reencrypt_moves_the_data_key_to_another_key(kms_service):
    """ReEncrypt under a second key: the new blob opens under that key."""
    kms, key = client(kms_service), secrets.token_bytes(32)
    old, new = ref_of(kms_service.new_key()), ref_of(kms_service.new_key())
    moved = kms.rewrap(old, kms.wrap(old, key, CTX), CTX, new)
    assert kms.unwrap(new, moved, CTX) == key


def test_describe_names_state_spec_and_rotation(kms_service):
    """describe gives the key id and state, its spec, creation date and rotation."""
    ref = ref_of(kms_service.new_key())
    kms_service.rotate(ref.ref)
    info = client(kms_service).describe(ref)
    assert info.version.endswith("(Enabled)")
    assert "SYMMETRIC_DEFAULT, Enabled, created 2" in info.detail
    assert "rotation o" in info.detail


def test_describe_refuses_an_asymmetric_key(kms_service):
    """An RSA key cannot wrap data keys the way the portal needs."""
    ref = ref_of(kms_service.new_key(key_spec="RSA_2048"))
    with pytest.raises(CustodyError, match="symmetric encryption key"):
        client(kms_service).describe(ref)


def test_assumed_role_with_external_id(kms_service):
    """With a role, calls use its credentials: taking its permission away revokes."""
    kms, arn, key = client(kms_service), kms_service.new_key(), secrets.token_bytes(32)
    role = ref_of(arn, role_arn=kms_service.role_for("org-41"), external_id="org-41")
    wrapped = kms.wrap(role, key, CTX)
    assert kms.unwrap(role, wrapped, CTX) == key
    kms_service.revoke_role(role.role_arn)
    with pytest.raises(KeyAccessRevoked, match="AccessDenied"):
        kms.unwrap(role, wrapped, CTX)
    assert kms.unwrap(ref_of(arn), wrapped, CTX) == key


def test_wrong_external_id_is_refused(kms_service):
    """moto (with its IAM checks on) enforces the trust policy's sts:ExternalId."""
    role_arn = kms_service.role_for("org-41")
    ref = ref_of(kms_service.new_key(), role_arn=role_arn, external_id="org-42")
    with pytest.raises(KeyAccessRevoked, match="AccessDenied") as refused:
        client(kms_service).wrap(ref, secrets.token_bytes(32), CTX)
    assert role_arn in str(refused.value)


def test_unreachable_fails_fast_then_breaker_answers_alone(kms_service):
    """Connection refused -> unreachable at once; then the breaker answers without calling."""
    now = [0.0]
    kms = client(kms_service, breaker_seconds=10, clock=lambda: now[0])
    ref, key = ref_of(kms_service.new_key()), secrets.token_bytes(32)
    wrapped = kms.wrap(ref, key, CTX)
    kms_service.stop()
    try:
        began = time.monotonic()
        with pytest.raises(KeyServiceUnreachable, match="EndpointConnectionError"):
            kms.unwrap(ref, wrapped, CTX)
        assert time.monotonic() - began < 2
    finally:
        kms_service.start()
    # The service is back, yet the open breaker still answers: no call was made.
    with pytest.raises(KeyServiceUnreachable, match="did not answer recently"):
        kms.unwrap(ref, wrapped, CTX)
    now[0] += 11
    assert kms.unwrap(ref, wrapped, CTX) == key
    assert kms.health().state == "reachable"


def test_silent_endpoint_times_out_after_kms_timeout_seconds(kms_service):
    """An endpoint that accepts but never answers: one attempt, KMS_TIMEOUT_SECONDS long."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        kms = KeyServiceClient(aws_kms.start({**kms_service.config, "AWS_ENDPOINT_URL": endpoint}))
        began = time.monotonic()
        with pytest.raises(KeyServiceUnreachable, match="ReadTimeoutError"):
            kms.wrap(ref_of(kms_service.new_key()), secrets.token_bytes(32), CTX)
    assert time.monotonic() - began < kms_service.config["KMS_TIMEOUT_SECONDS"] + 1


def test_errors_never_show_credentials_or_the_data_key(kms_service):
    """str() and repr() of every failure, and of the service, hold no secret."""
    config, key = kms_service.config, secrets.token_bytes(32)
    kms, arn = client(kms_service), kms_service.new_key()
    wrapped = kms.wrap(ref_of(arn), key, CTX)
    bad_role = ref_of(arn, role_arn=kms_service.role_for("org-1"), external_id="org-2")
    failures = [
        lambda: kms.unwrap(ref_of(arn), wrapped, wrap_context(2, "cd" * 16)),
        lambda: kms.wrap(bad_role, key, CTX),
        lambda: kms.wrap(ref_of(arn.replace("alias/", "alias/gone-")), key, CTX),
    ]
    texts = [repr(kms.service), repr(kms)]
    for fail in failures:
        with pytest.raises(CustodyError) as caught:
            fail()
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
        texts += [str(caught.value), repr(caught.value)]
    secrets_ = [config["AWS_ACCESS_KEY_ID"], config["AWS_SECRET_ACCESS_KEY"], key.hex(), repr(key)]
    assert not [s for s in secrets_ for text in texts if s in text]


def test_start_only_when_configured():
    """No region and no endpoint: not configured; an endpoint alone defaults the region."""
    assert aws_kms.start({}) is None
    assert aws_kms.start({"AWS_REGION": None, "AWS_ENDPOINT_URL": ""}) is None
    assert aws_kms.start({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}).region == "us-east-1"


def test_imports_without_boto3_and_says_which_extra():
    """The module loads without boto3; configured, it asks for the ``aws`` extra."""
    code = (
        "import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "from portal.keys.custody import aws_kms\n"
        "assert aws_kms.start({}) is None\n"
        "aws_kms.start({'AWS_REGION': 'eu-west-1'})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "CustodyError" in done.stderr and "byok-portal[aws]" in done.stderr


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("arn:aws:kms:eu-west-1:111122223333:alias/byok", True),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("alias/byok", True),
        ("arn:aws:s3:::bucket", False),
        ("my key", False),
    ],
)
def test_check_ref(ref, ok):
    """Key and alias ARNs (and bare ids) pass; anything else is explained."""
    problem = aws_kms.start({"AWS_REGION": "eu-west-1"}).check_ref(ref)
    assert (problem is None) is ok
    assert ok or "ARN" in problem
