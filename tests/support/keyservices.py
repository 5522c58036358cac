"""Real key services for the tests: OpenBao Transit, SoftHSM2 over PKCS#11, moto's KMS.

Each provider's fixture module (``keyservice_vault.py``, ``keyservice_pkcs11.py``,
``keyservice_kms.py``) starts the real service on loopback once per test process and hands
tests an object of the shape below. In CI a service that cannot start fails the test
(``require_service``); it never skips.
"""

from __future__ import annotations

from typing import Any, Protocol

import pytest

from tests.support.web import require_or_skip


class RunningKeyService(Protocol):
    """A real key service a test can point the portal at, revoke, restore, kill and restart."""

    # The provider name the portal uses: "vault-transit", "pkcs11" or "aws-kms".
    provider: str

    @property
    def config(self) -> dict[str, Any]:
        """App settings (``app_config`` overrides) that point the portal at this service."""
        ...

    def new_key(self) -> str:
        """Create a fresh key in the service and return its key reference."""
        ...

    def rotate(self, ref: str) -> None:
        """Rotate the key inside the service (a new version wraps from now on)."""
        ...

    def revoke(self, ref: str) -> None:
        """Cut the portal off from the key, the way a customer would."""
        ...

    def restore(self, ref: str) -> None:
        """Give the portal its access to the key back."""
        ...

    def stop(self) -> None:
        """Kill the service's process (SIGKILL): calls find it unreachable; keys survive."""
        ...

    def start(self) -> None:
        """Start the service again after stop(), with the same keys."""
        ...


def require_service(what: str, why: str) -> None:
    """Fail in CI (a missing service is a defect there), skip elsewhere: require_or_skip's rule."""
    require_or_skip(False, f"{what} is not available here: {why}")


# The fixtures of every provider, for tests that run against each one.
PROVIDERS = ("vault_service", "pkcs11_service", "kms_service")


def pointed_at(
    request: pytest.FixtureRequest, app_config: dict, fixture: str, **settings: Any
) -> RunningKeyService:
    """Start a provider's fixture and point the app's settings at it (before ``app`` exists:
    the fixtures calling this are autouse, so they run before the app is created)."""
    running = request.getfixturevalue(fixture)
    app_config.update(running.config, **settings)
    return running
