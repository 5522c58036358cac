"""Where chat gets keyrings from, without importing portal.keys (which is built on chat).

portal.keys implements :class:`KeyringSource` and create_app puts it in
``app.extensions["keyrings"]``; chat asks for it through :func:`keyring_source`.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from flask import current_app
from sqlalchemy.orm import Session

from portal import crypto


class KeyringSource(Protocol):
    """Hands out an organisation's keyring for writing or for reading its data."""

    def writable(self, session: Session, company_id: uuid.UUID) -> crypto.Keyring:
        """The keyring new data is encrypted with, after checking the data may be stored.

        Raises where the organisation may not store data yet (BYOK required but not
        enabled) or its encrypting key cannot be used right now.
        """
        ...

    def readable(self, session: Session, company_id: uuid.UUID) -> crypto.Keyring:
        """The keyring that decrypts the organisation's stored data (every usable key)."""
        ...


def keyring_source() -> KeyringSource:
    """Return the app's keyring source; raise if create_app did not wire one."""
    source: KeyringSource | None = current_app.extensions.get("keyrings")
    if source is None:
        # Never fall back to anything: writing without the BYOK-required check would store
        # data an isolated organisation must not have stored under a platform key.
        raise RuntimeError(
            'app.extensions["keyrings"] is not set: create_app wires portal.keys.keyrings, '
            "without which chat data can be neither stored nor read"
        )
    return source
