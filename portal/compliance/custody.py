"""What the page shows about key custody: the key services to connect, and where keys live.

Everything here is read from the app's started key services and the status the keys area
computed (``portal/keys/status.py``); nothing calls a key service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup

from portal.keys import custody as registry
from portal.keys.custody.keyservice import PROVIDERS, KeyInfo
from portal.keys.external import tested_marker
from portal.keys.status import KeyStatus

# What an operator sets so that organisations can connect a key (README's configuration).
HOW_TO_CONFIGURE = (
    "No key service is configured on this installation: an operator sets VAULT_ADDR with "
    "VAULT_TOKEN (or VAULT_ROLE_ID and VAULT_SECRET_ID) for Vault or OpenBao Transit, "
    "PKCS11_MODULE, PKCS11_TOKEN_LABEL and PKCS11_PIN for an HSM, or AWS_REGION and AWS "
    "credentials for AWS KMS, and restarts the portal."
)

# The key service's state as people read it on the status panel.
STATE_WORDS = {
    "reachable": "reachable",
    "unreachable": "unreachable: it did not answer",
    "denied": "access denied (revoked)",
    "unknown": "not asked yet",
}

# Why a key is unavailable (LoadedKeys.codes), in words for the keys table.
REASON_WORDS = {
    "key_access_revoked": "access revoked",
    "key_service_unreachable": "key service unreachable",
    "key_unavailable": "cannot be opened",
}


@dataclass(frozen=True)
class Provider:
    """A key service this installation started, as the wizard offers it."""

    name: str
    label: str
    ref_label: str


@dataclass(frozen=True)
class Choices:
    """The key services an admin can connect here, and why configured others cannot be."""

    started: list[Provider]
    # Provider name -> why it is configured but not running (say, its extra is missing).
    problems: dict[str, str]

    @property
    def configured(self) -> bool:
        """Whether the operator configured any key service at all."""
        return bool(self.started or self.problems)

    def label(self, name: str | None) -> str:
        """The label of a provider, or its name when this installation did not start it."""
        return next((p.label for p in self.started if p.name == name), name or "")

    def ref_label(self, name: str | None) -> str:
        """What the provider calls a key reference (the first started one's by default)."""
        found = next((p for p in self.started if p.name == name), None)
        found = found or (self.started[0] if self.started else None)
        return found.ref_label if found else "Key reference"


def choices() -> Choices:
    """The started key services in the wizard's order, and the problems of the others."""
    services = registry.key_services()
    started = [
        Provider(name, services[name].label, services[name].ref_label)
        for name in PROVIDERS
        if name in services
    ]
    problems = {n: p for n, p in registry.service_problems().items() if n not in services}
    return Choices(started, problems)


def when(value: str | datetime | None) -> str | None:
    """A stored or ISO time as the panel shows it: ``2025-01-31 14:05:09 UTC``."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def panel(status: KeyStatus | None, found: Choices) -> dict[str, Any] | None:
    """Where the active key lives and what its key service answered, ready for the page."""
    if status is None or status.active is None:
        return None
    service = status.key_service
    if service is None:
        return {"external": False, "text": "Sealed by this installation's master key"}
    label = service.get("label") or found.label(status.custody)
    state = str(service.get("state") or "unknown")
    return {
        "external": True,
        "text": f"{label}: {status.key_ref}",
        "label": label,
        "ref_label": service.get("ref_label") or found.ref_label(status.custody),
        "key_ref": status.key_ref,
        "state": state,
        "state_words": STATE_WORDS.get(state, state),
        "version": service.get("version"),
        "error": service.get("error"),
        "last_success": when(service.get("last_success")),  # type: ignore[arg-type]
        "cache_expires": when(service.get("cache_expires")),  # type: ignore[arg-type]
        "cache_seconds": service.get("cache_seconds"),
    }


def key_custody(key: dict[str, Any], found: Choices) -> str:
    """One keys-table row's custody: "sealed", or the provider and its key reference."""
    if key.get("custody") in (None, "sealed"):
        return "sealed"
    return f"{found.label(key['custody'])}: {key.get('key_ref') or ''}"


def marker_of(provider: str | None, ref: str | None, role_arn: str | None) -> str:
    """The tested marker of a reference as typed (trimmed the way read_ref trims it)."""
    return tested_marker((provider or "").strip(), (ref or "").strip(), (role_arn or "").strip())


def still_marked(form: Any) -> str | None:
    """The marker a refused step keeps: the posted reference is still the one tested."""
    marker = marker_of(form.provider.data, form.key_ref.data, form.role_arn.data)
    return marker if form.tested.data and form.tested.data == marker else None


def tested_message(info: KeyInfo, button: str) -> Markup:
    """The field feedback after Test passed: the key service's key version and detail."""
    return Markup(
        "Test passed: the key service wrapped and unwrapped a test data key. Key version "
        '<code data-testid="key-version">{}</code> ({}). Confirm with your password, then '
        "press <strong>{}</strong>."
    ).format(info.version, info.detail, button)


def ok(form: str, field: str, html: Markup) -> dict[str, Any]:
    """A success message for one field of one form (fragment and full page alike)."""
    return {"form": form, "field": field, "html": html}


def kept_message(button: str) -> Markup:
    """The field feedback that keeps a passed Test across a refusal elsewhere in the form."""
    return Markup(
        "This key passed Test. Confirm with your password, then press <strong>{}</strong>."
    ).format(button)
