"""AWS KMS as an organisation's key service (boto3, the ``aws`` extra).

A data key is wrapped by KMS Encrypt under the customer's symmetric key with the wrap context
as the *encryption context*, so KMS refuses to decrypt it for another organisation. The
stored wrapped bytes are KMS's CiphertextBlob as returned. An organisation may name a role
in its own account: the portal then assumes it (ExternalId = the organisation's id) and
calls KMS with the role's temporary credentials, so the customer revokes by editing the role.

Offered when ``AWS_REGION`` or ``AWS_ENDPOINT_URL`` is set; credentials come from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` or boto3's default
chain (instance profile, ``~/.aws``, ...).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from portal.keys.custody.base import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.custody.keyservice import KeyInfo, KeyRef, WrapContext

T = TypeVar("T")
NAME = "aws-kms"
ROLE_SESSION_NAME = "byok-portal"
# Assumed-role credentials are replaced this long before AWS says they expire.
ROLE_REFRESH_MARGIN = 300

_KEY_ID = r"(?:mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_ARN = re.compile(rf"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):\d{{12}}:(?:key/{_KEY_ID}|{_ALIAS})")
_BARE = re.compile(rf"{_KEY_ID}|{_ALIAS}")

# The customer's side said no: the key is disabled, deleted, unknown or not ours to use.
REVOKED = {
    "AccessDenied",
    "AccessDeniedException",
    "DisabledException",
    "KMSInvalidStateException",
    "NotFoundException",
}
# KMS answered but asks to be retried later: treated like no answer, so the breaker opens.
TRANSIENT = {"DependencyTimeoutException", "KeyUnavailableException", "HTTP 502", "HTTP 503"}


def _code(exc: Any) -> str:
    """The AWS error code of a ClientError (never its message, which may echo a request)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    if code.isdigit():
        # Some endpoints (moto's IAM layer among them) answer a JSON-protocol call in XML;
        # botocore then reports only the HTTP status and keeps the XML as the message.
        found = re.search(r"<Code>(\w+)</Code>", str(error.get("Message", "")))
        code = found.group(1) if found else f"HTTP {code}"
    return code or "unknown error"


def _guard(what: str, call: Callable[[], T]) -> T:
    """Run one AWS call, turning every boto error into the custody error it means."""
    from botocore import exceptions as aws

    try:
        return call()
    except aws.ClientError as exc:
        code = _code(exc)
        if code in REVOKED:
            raise KeyAccessRevoked(f"AWS refused access to {what} ({code})") from None
        if code in TRANSIENT:
            raise KeyServiceUnreachable(f"AWS KMS is not answering for {what} ({code})") from None
        if code == "InvalidCiphertextException":
            raise CustodyError(
                f"AWS KMS could not open the wrapped data key under {what} "
                "(InvalidCiphertextException: another organisation's context, or altered bytes)"
            ) from None
        raise CustodyError(f"AWS KMS call for {what} failed ({code})") from None
    except (aws.ConnectionError, aws.HTTPClientError) as exc:
        # Connection refused, DNS, TLS handshake, connect/read timeout, dropped connection.
        raise KeyServiceUnreachable(
            f"AWS KMS did not answer for {what} ({type(exc).__name__})"
        ) from None
    except Exception as exc:
        # No credentials, a parameter AWS would refuse (an ExternalId shorter than 2), ...:
        # only the class is named, as botocore's texts may quote the request.
        raise CustodyError(f"AWS call for {what} failed ({type(exc).__name__})") from None


class AwsKms:
    """Customers' keys in AWS KMS, optionally through a role in the customer's account."""

    name = NAME
    label = "AWS KMS"
    ref_label = "KMS key ARN"

    def __init__(
        self,
        region: str,
        endpoint_url: str | None,
        credentials: Mapping[str, str],
        timeout: float,
    ) -> None:
        """Remember the settings; nothing is contacted until the first call."""
        self.region = region
        self.endpoint_url = endpoint_url
        self._credentials = dict(credentials)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._session: Any = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._roles: dict[tuple[str, str | None, str], tuple[Any, float]] = {}

    def __repr__(self) -> str:
        """Name the region and endpoint, never the credentials."""
        return f"<AwsKms region={self.region} endpoint={self.endpoint_url or 'aws'}>"

    def check_ref(self, ref: str) -> str | None:
        """Accept a key ARN or alias ARN (recommended: it names the account and region), or a
        bare key id / ``alias/<name>`` in the portal's own account and region."""
        if _ARN.fullmatch(ref) or _BARE.fullmatch(ref):
            return None
        return (
            "Enter the key's ARN, like arn:aws:kms:eu-west-1:111122223333:key/"
            "1234abcd-12ab-34cd-56ef-1234567890ab, or an alias ARN ending in :alias/<name>"
        )

    # -- clients -------------------------------------------------------------------------

    def _region_of(self, ref: KeyRef) -> str:
        """The region a key ARN names, else the configured one."""
        found = _ARN.fullmatch(ref.ref)
        return found.group("region") if found else self.region

    def _client(self, service: str, region: str, **credentials: str) -> Any:
        """Make a client in this process (the lock is held: sessions are not thread-safe)."""
        import boto3
        from botocore.config import Config

        try:
            if self._pid != os.getpid():
                # After a fork the parent's connections and session must not be shared.
                self._pid = os.getpid()
                self._clients.clear()
                self._roles.clear()
                self._session = boto3.session.Session(**self._credentials)
            config = Config(
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
                # One attempt, no retry (botocore's "max_attempts" would count retries only):
                # a dead endpoint fails within the timeout, then the breaker waits.
                retries={"total_max_attempts": 1, "mode": "standard"},
            )
            return self._session.client(
                service,
                region_name=region,
                endpoint_url=self.endpoint_url,
                config=config,
                **credentials,
            )
        except Exception as exc:
            # Say an AWS_ENDPOINT_URL that is no URL; the text may hold settings, so not shown.
            self._pid = None
            name = type(exc).__name__
            raise CustodyError(f"could not set up the AWS {service} client ({name})") from None

    def _shared(self, service: str, region: str) -> Any:
        """The client with the installation's own credentials, made once per process."""
        with self._lock:
            if self._pid != os.getpid() or (service, region) not in self._clients:
                self._clients[(service, region)] = self._client(service, region)
            return self._clients[(service, region)]

    def _kms(self, ref: KeyRef) -> Any:
        """The KMS client for ref: the organisation's role when it names one."""
        region = self._region_of(ref)
        if not ref.role_arn:
            return self._shared("kms", region)
        key = (ref.role_arn, ref.external_id, region)
        with self._lock:
            cached = self._roles.get(key) if self._pid == os.getpid() else None
        if cached is not None and cached[1] > time.time():
            return cached[0]
        sts = self._shared("sts", self.region)
        params = {"RoleArn": ref.role_arn, "RoleSessionName": ROLE_SESSION_NAME}
        if ref.external_id:
            params["ExternalId"] = ref.external_id
        creds = _guard(f"role {ref.role_arn}", lambda: sts.assume_role(**params))["Credentials"]
        with self._lock:
            client = self._client(
                "kms",
                region,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
            )
            expires = creds["Expiration"].timestamp() - ROLE_REFRESH_MARGIN
            self._roles[key] = (client, expires)
        return client

    # -- calls ---------------------------------------------------------------------------

    def wrap(self, ref: KeyRef, data_key: bytes, context: WrapContext) -> bytes:
        """KMS Encrypt the data key under ref, with the context as encryption context."""
        kms = self._kms(ref)
        answer = _guard(
            ref.ref,
            lambda: kms.encrypt(
                KeyId=ref.ref, Plaintext=bytes(data_key), EncryptionContext=dict(context)
            ),
        )
        return answer["CiphertextBlob"]

    def unwrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext) -> bytes:
        """KMS Decrypt, insisting on ref's key and the same encryption context."""
        kms = self._kms(ref)
        answer = _guard(
            ref.ref,
            lambda: kms.decrypt(
                CiphertextBlob=bytes(wrapped), EncryptionContext=dict(context), KeyId=ref.ref
            ),
        )
        return answer["Plaintext"]

    def rewrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext, new_ref: KeyRef) -> bytes:
        """KMS ReEncrypt to new_ref's key; with a different role, decrypt then encrypt."""
        if (ref.role_arn, ref.external_id) != (new_ref.role_arn, new_ref.external_id):
            # No one principal may use both keys: the data key passes through this process.
            return self.wrap(new_ref, self.unwrap(ref, wrapped, context), context)
        kms = self._kms(new_ref)
        answer = _guard(
            f"{ref.ref} -> {new_ref.ref}",
            lambda: kms.re_encrypt(
                CiphertextBlob=bytes(wrapped),
                SourceEncryptionContext=dict(context),
                SourceKeyId=ref.ref,
                DestinationKeyId=new_ref.ref,
                DestinationEncryptionContext=dict(context),
            ),
        )
        return answer["CiphertextBlob"]

    def describe(self, ref: KeyRef) -> KeyInfo:
        """DescribeKey: refuse keys that cannot wrap; say state, spec and rotation."""
        kms = self._kms(ref)
        meta = _guard(ref.ref, lambda: kms.describe_key(KeyId=ref.ref))["KeyMetadata"]
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec", "?")
        usage, state = meta.get("KeyUsage", "?"), meta.get("KeyState", "?")
        if (spec, usage) != ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"):
            raise CustodyError(
                f"{ref.ref} is a {spec} key for {usage}; the portal needs a symmetric "
                "encryption key (key spec SYMMETRIC_DEFAULT, usage ENCRYPT_DECRYPT)"
            )
        if state != "Enabled":
            raise KeyAccessRevoked(f"AWS KMS key {ref.ref} cannot be used: it is {state}")
        rotation = "rotation unknown"
        try:
            status = _guard(ref.ref, lambda: kms.get_key_rotation_status(KeyId=meta["KeyId"]))
            rotation = "rotation on" if status.get("KeyRotationEnabled") else "rotation off"
        except KeyServiceUnreachable:
            raise
        except CustodyError:
            # A least-privilege policy may leave out kms:GetKeyRotationStatus.
            pass
        created = meta.get("CreationDate")
        when = f"created {created:%Y-%m-%d}" if created else "creation date unknown"
        return KeyInfo(f"{meta['KeyId']} ({state})", f"{spec}, {state}, {when}, {rotation}")

    def ping(self) -> None:
        """ListKeys (one key): an AccessDenied answer still proves KMS is there and signed in."""
        kms = self._shared("kms", self.region)
        with contextlib.suppress(KeyAccessRevoked):
            _guard("ListKeys", lambda: kms.list_keys(Limit=1))


def start(config: Mapping[str, Any]) -> AwsKms | None:
    """Start the provider when AWS_REGION or AWS_ENDPOINT_URL is set; no call to AWS here."""
    region = config.get("AWS_REGION")
    endpoint = config.get("AWS_ENDPOINT_URL")
    if not region and not endpoint:
        return None
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise CustodyError(
            "AWS KMS is configured (AWS_REGION/AWS_ENDPOINT_URL) but boto3 is missing: "
            "install 'byok-portal[aws]'"
        ) from None
    names = {
        "aws_access_key_id": "AWS_ACCESS_KEY_ID",
        "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "aws_session_token": "AWS_SESSION_TOKEN",
    }
    # Only what is set: the rest comes from boto3's default chain.
    credentials = {arg: config[key] for arg, key in names.items() if config.get(key)}
    timeout = float(config.get("KMS_TIMEOUT_SECONDS") or 5)
    return AwsKms(region or "us-east-1", endpoint or None, credentials, timeout)
