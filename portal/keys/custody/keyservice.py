"""External key services: the customer's Vault/OpenBao Transit, PKCS#11 HSM or cloud KMS.

The portal never holds the customer's key. For an organisation whose key lives in such a
service it generates a random 256-bit *data key*, has the service wrap it under the
customer's key with the organisation bound in (Transit context/associated data, a KMS
encryption context, PKCS#11 AES-GCM associated data), and stores only the wrapped copy
(``keys.sealed``, with ``keys.custody`` naming the provider and ``keys.key_ref`` the key).
Data rows are encrypted by the data key exactly as by a sealed key (docs/format.md).

A provider module implements ``KeyService`` and a factory ``start(config)`` returning the
service, or None when the installation has not configured it. ``KeyServiceClient``
(``portal/keys/custody/client.py``) wraps every started service with the data-key cache,
the circuit breaker and the health record that pages and ``/healthz`` show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# The providers an organisation can connect, in the order the wizard offers them.
PROVIDERS = ("vault-transit", "pkcs11", "aws-kms")

# Context bound into every wrap: the organisation and the data key's public id. A wrapped
# data key copied to another organisation's row fails to unwrap.
WrapContext = Mapping[str, str]


def wrap_context(company_id: object, key_id_hex: str) -> dict[str, str]:
    """The context a data key of this organisation is wrapped with."""
    return {"company_id": str(company_id), "key_id": key_id_hex}


@dataclass(frozen=True)
class KeyRef:
    """Which key in the customer's service wraps an organisation's data keys (never a secret)."""

    provider: str
    # Transit key name, KMS key ARN (or alias ARN), or PKCS#11 key label.
    ref: str
    # AWS only: a role in the customer's account, assumed with ExternalId = organisation id.
    role_arn: str | None = None
    # AWS only: the ExternalId sent with role_arn (the organisation id).
    external_id: str | None = None

    def __str__(self) -> str:
        """Name the key as people read it: provider and reference."""
        return f"{self.provider}:{self.ref}"


@dataclass(frozen=True)
class KeyInfo:
    """What the service says about the customer's key, as shown after Test and on status."""

    # The service's version of the key that wraps new data keys ("3" for Transit v3; for
    # KMS and PKCS#11, which keep versions internal, the key's id and state).
    version: str
    # One line for people, e.g. "aes256-gcm96, latest version 3, decrypts from version 1".
    detail: str


class KeyService(Protocol):
    """One provider's calls. Failures raise KeyAccessRevoked (the service said no),
    KeyServiceUnreachable (it did not answer) or CustodyError (anything else); messages name
    the key reference at most, never key material, tokens or PINs.
    """

    name: str
    # What people call the provider and its key reference, for the wizard and the status panel.
    label: str
    ref_label: str

    def check_ref(self, ref: str) -> str | None:
        """Return why ref is not a well-formed key reference for this provider, or None."""
        ...

    def wrap(self, ref: KeyRef, data_key: bytes, context: WrapContext) -> bytes:
        """Return data_key wrapped under ref's key, bound to context."""
        ...

    def unwrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext) -> bytes:
        """Return the data key wrapped with this context under ref's key."""
        ...

    def rewrap(self, ref: KeyRef, wrapped: bytes, context: WrapContext, new_ref: KeyRef) -> bytes:
        """Return the same data key wrapped under new_ref's key (newest version), never
        exposing it where the service can avoid it (Transit rewrap, KMS ReEncrypt)."""
        ...

    def describe(self, ref: KeyRef) -> KeyInfo:
        """Return the service's view of ref's key (raises when it cannot be used)."""
        ...

    def ping(self) -> None:
        """Make the cheapest authenticated call that proves the service answers."""
        ...


# start(config) -> service, or None when the installation has not configured this provider.
# It raises CustodyError when configured but unusable (say, the optional extra is missing).
ServiceFactory = Callable[[Mapping[str, Any]], KeyService | None]
