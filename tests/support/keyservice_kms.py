"""AWS KMS for the tests: the real ``moto_server`` on loopback, behind a TCP forwarder.

moto keeps its keys in memory, so a killed moto_server would come back empty. Instead the
portal reaches moto through ``tcp_forward.py``, a separate process: ``stop()`` SIGKILLs that
forwarder (the portal then gets connection refused, as when KMS is unreachable) and
``start()`` runs a new one on the same port, in front of the same moto and its keys.

moto runs with its IAM checks on (``/moto-api/reset-auth`` after set-up): the portal signs
in as an IAM user allowed KMS and sts:AssumeRole, and ``role_for()`` makes roles whose trust
policy demands the ExternalId, which moto then enforces (without IAM checks it would let any
ExternalId, even an unknown role, through). So ``config`` holds that user's moto-made keys,
not "testing".

moto quirks the methods work around (moto 5.2):
- Encrypt/Decrypt ignore the key state: a disabled key (even one pending deletion) keeps
  working. So ``new_key()`` returns an *alias* ARN, and ``revoke()`` disables the key (what
  a customer does, and real KMS enforces) and also deletes the alias, which moto does
  enforce (NotFoundException); ``restore()`` re-creates the alias and enables the key.
- DisableKey/EnableKey/ScheduleKeyDeletion take only a bare key id (an ARN is a 500).
- ``rotate()`` uses RotateKeyOnDemand, which moto records (ListKeyRotations) without new
  key material; old and new wraps open either way.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.keyservices import require_service
from tests.support.processes import free_port

FORWARDER = Path(__file__).with_name("tcp_forward.py")
REGION = "us-east-1"
ACCOUNT = "123456789012"
ALLOW_ALL = {"Effect": "Allow", "Action": "*", "Resource": "*"}
PORTAL_POLICY = {"Effect": "Allow", "Action": ["kms:*", "sts:AssumeRole"], "Resource": "*"}
# What a customer's role grants the portal: the calls the provider makes, nothing more.
ROLE_POLICY = {
    "Effect": "Allow",
    "Action": [
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncrypt*",
        "kms:DescribeKey",
        "kms:GetKeyRotationStatus",
    ],
    "Resource": "*",
}


def _policy(*statements: dict) -> str:
    """An IAM policy document."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    """Wait until something accepts on the loopback port, or fail naming what did not."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start listening on port {port}") from None
            time.sleep(0.05)


class MotoKms:
    """moto_server with IAM checks, the forwarder in front, and the customer's controls."""

    provider = "aws-kms"

    def __init__(self, workdir: Path) -> None:
        """Pick the ports and the log file; nothing runs until launch()."""
        self.workdir = workdir
        self.moto_port = free_port()
        self.port = free_port()
        self._moto: subprocess.Popen | None = None
        self._forwarder: subprocess.Popen | None = None
        self._portal_keys: dict[str, str] = {}
        self._admin_keys: dict[str, str] = {}
        self._targets: dict[str, str] = {}
        self._log: Any = None

    def launch(self) -> None:
        """Start moto_server, create the admin and portal users, turn IAM checks on."""
        self._log = (self.workdir / "moto.log").open("wb")
        self._moto = subprocess.Popen(
            [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1"]
            + ["-p", str(self.moto_port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _wait_for_port(self.moto_port, self._moto, "moto_server")
        setup = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self._admin_keys = self._user("byok-admin", ALLOW_ALL, setup)
        self._portal_keys = self._user("byok-portal", PORTAL_POLICY, setup)
        request = urllib.request.Request(
            f"{self.moto_url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        self.start()

    def _user(self, name: str, statement: dict, creds: dict[str, str]) -> dict[str, str]:
        """Create an IAM user with one inline policy; return its access key as boto3 args."""
        iam = self.client("iam", creds)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="access", PolicyDocument=_policy(statement))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }

    @property
    def moto_url(self) -> str:
        """moto itself, for the tests' own set-up calls (never through the forwarder)."""
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def config(self) -> dict[str, Any]:
        """Settings that point the portal at the forwarder, as the portal's IAM user."""
        return {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self._portal_keys["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": self._portal_keys["aws_secret_access_key"],
            "KMS_TIMEOUT_SECONDS": 2,
        }

    def client(self, service: str, creds: dict[str, str] | None = None) -> Any:
        """A boto3 client straight to moto, as the admin unless other credentials are given."""
        import boto3

        return boto3.client(
            service, endpoint_url=self.moto_url, region_name=REGION, **(creds or self._admin_keys)
        )

    def new_key(self, key_spec: str = "SYMMETRIC_DEFAULT") -> str:
        """Create a key (symmetric unless key_spec says otherwise) and return its alias ARN."""
        kms = self.client("kms")
        key_id = kms.create_key(KeySpec=key_spec, KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"][
            "KeyId"
        ]
        alias = f"alias/byok-test-{secrets.token_hex(6)}"
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)
        ref = f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"
        self._targets[ref] = key_id
        return ref

    def key_arn(self, ref: str) -> str:
        """The ARN of the key a reference from new_key() names."""
        return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{self._key_id(ref)}"

    def _key_id(self, ref: str) -> str:
        """The bare key id (all moto's DisableKey/EnableKey accept) of a reference."""
        return self._targets.get(ref) or ref.rsplit("/", 1)[-1]

    def rotate(self, ref: str) -> None:
        """RotateKeyOnDemand (moto records the rotation; wraps before and after both open)."""
        self.client("kms").rotate_key_on_demand(KeyId=self._key_id(ref))

    def revoke(self, ref: str) -> None:
        """Disable the key and delete its alias (moto ignores the disabling; see above)."""
        kms = self.client("kms")
        kms.disable_key(KeyId=self._key_id(ref))
        if ":alias/" in ref:
            kms.delete_alias(AliasName="alias/" + ref.split(":alias/", 1)[1])

    def restore(self, ref: str) -> None:
        """Re-create the alias and enable the key."""
        kms = self.client("kms")
        if ":alias/" in ref:
            name = "alias/" + ref.split(":alias/", 1)[1]
            kms.create_alias(AliasName=name, TargetKeyId=self._key_id(ref))
        kms.enable_key(KeyId=self._key_id(ref))

    def role_for(self, external_id: str) -> str:
        """Create a customer role the portal may assume only with this ExternalId."""
        iam = self.client("iam")
        name = f"byok-org-{secrets.token_hex(6)}"
        trust = {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/byok-portal"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
        }
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=_policy(trust))
        iam.put_role_policy(RoleName=name, PolicyName="kms", PolicyDocument=_policy(ROLE_POLICY))
        return role["Role"]["Arn"]

    def revoke_role(self, role_arn: str) -> None:
        """Take the KMS permissions off a customer role (the credentials stay valid)."""
        self.client("iam").delete_role_policy(RoleName=role_arn.rsplit("/", 1)[1], PolicyName="kms")

    def stop(self) -> None:
        """SIGKILL the forwarder: calls are refused; moto and its keys live on."""
        if self._forwarder is not None and self._forwarder.poll() is None:
            self._forwarder.send_signal(signal.SIGKILL)
            self._forwarder.wait(timeout=10)
        self._forwarder = None

    def start(self) -> None:
        """Run a new forwarder on the same port, in front of the same moto."""
        if self._forwarder is not None and self._forwarder.poll() is None:
            return
        self._forwarder = subprocess.Popen(
            [sys.executable, str(FORWARDER), str(self.port), str(self.moto_port)]
        )
        _wait_for_port(self.port, self._forwarder, "the KMS forwarder")

    def close(self) -> None:
        """Stop the forwarder and moto_server."""
        self.stop()
        if self._moto is not None and self._moto.poll() is None:
            self._moto.send_signal(signal.SIGKILL)
            self._moto.wait(timeout=10)
        if self._log is not None:
            self._log.close()


@pytest.fixture(scope="session")
def kms_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoKms]:
    """moto's KMS for this test process, reached through a forwarder that tests can kill."""
    if shutil.which("moto_server") is None:
        require_service("moto_server (AWS KMS)", "install 'moto[server]>=5'")
    try:
        import boto3  # noqa: F401
    except ImportError:
        require_service("AWS KMS", "boto3 is not installed: install 'byok-portal[aws]'")
    service = MotoKms(tmp_path_factory.mktemp("moto"))
    try:
        service.launch()
    except Exception as exc:  # any failure to set moto up means: no KMS here
        service.close()
        log = (service.workdir / "moto.log").read_text(errors="replace")[-2000:]
        require_service("moto_server (AWS KMS)", f"{exc}\n{log}")
    try:
        yield service
    finally:
        service.close()
