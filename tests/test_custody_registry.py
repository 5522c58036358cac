"""Key custody is a registry: KEY_CUSTODY picks the backend for new keys, rows name their own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask
from sqlalchemy import select, update

from portal import create_app
from portal.audit.actions import Action
from portal.audit.chain import verify_all
from portal.audit.models import AuditHead
from portal.chat.service import create_token
from portal.config import ConfigError
from portal.db import get_session
from portal.events import emit
from portal.keys import custody
from portal.keys.custody.audit_key import MasterKeyAuditSource
from portal.keys.models import OrgKey
from portal.keys.service import load_keys, unseal
from portal.orgs import create_org

TEST_BACKEND = "test-vault"
TEST_HEADER = b"TV\x01"
# The audit signing key that the inline derivation before this registry gave for the test master
# key (tests/conftest.py MASTER_KEY_B64): pinned, so a change of derivation cannot go unseen.
AUDIT_KEY_BEFORE = "69eaa00887b5c9e4c45638052ed9cad410afce70294f4dae024957893c5a5a4f"


class VaultStandIn:
    """A test-only backend sealing under its own key; it counts what it is asked to do."""

    name = TEST_BACKEND

    def __init__(self) -> None:
        """Hold a random key that the master-key backend knows nothing about."""
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.unsealed = 0

    def seal(self, key: bytes, context: bytes) -> bytes:
        """Seal with a header of its own, so the rows show which backend made them."""
        nonce = os.urandom(12)
        return TEST_HEADER + nonce + self._aead.encrypt(nonce, key, context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """Unseal what seal made, counting the calls."""
        if not sealed.startswith(TEST_HEADER):
            raise custody.CustodyError("not sealed by the test vault")
        self.unsealed += 1
        return self._aead.decrypt(sealed[3:15], sealed[15:], context)


@pytest.fixture
def vault() -> Iterator[VaultStandIn]:
    """Register the test-only backend (one instance, shared by every app started meanwhile)."""
    backend = VaultStandIn()
    with custody.registered(TEST_BACKEND, lambda startup: backend):
        yield backend


def started(app_config: dict, **overrides: Any) -> Flask:
    """Start another app on the same database and Redis, with some settings changed."""
    return create_app({**app_config, **overrides})


def new_org(app: Flask, name: str) -> Any:
    """Create an organisation (and so its platform key) in app; return its id."""
    with app.app_context():
        db = get_session()
        org = create_org(db, name, "org_community")
        db.commit()
        return org.id


def key_rows(app: Flask, org_id: Any) -> list[OrgKey]:
    """Return the organisation's key rows."""
    with app.app_context():
        return list(get_session().scalars(select(OrgKey).where(OrgKey.company_id == org_id)))


def test_the_default_backend_is_the_master_key(app: Flask) -> None:
    """Without KEY_CUSTODY new keys are sealed under the master key, as before."""
    assert app.config["KEY_CUSTODY"] == "master-key"
    org_id = new_org(app, "Default Org")
    [row] = key_rows(app, org_id)
    assert row.custody == "master-key" and row.sealed.startswith(b"SK\x01")


def test_the_configured_name_selects_the_backend_for_new_keys(
    app: Flask, app_config: dict, vault: VaultStandIn
) -> None:
    """KEY_CUSTODY names the backend that seals every new key; the row stores that name."""
    other = started(app_config, KEY_CUSTODY=TEST_BACKEND)
    try:
        with other.app_context():
            from portal.keys.service import custody as configured

            assert configured() is vault
        org_id = new_org(other, "Vaulted Org")
        [row] = key_rows(other, org_id)
        assert row.custody == TEST_BACKEND and row.sealed.startswith(TEST_HEADER)
    finally:
        other.extensions["db_engine"].dispose()


def test_a_row_is_unsealed_by_the_backend_that_sealed_it(
    app: Flask, app_config: dict, vault: VaultStandIn
) -> None:
    """A key sealed by the test backend still opens when the master key seals new keys."""
    sealing = started(app_config, KEY_CUSTODY=TEST_BACKEND)
    reading = started(app_config)
    try:
        vaulted = new_org(sealing, "Vaulted Org")
        plain = new_org(reading, "Plain Org")
        with reading.app_context():
            db = get_session()
            loaded = load_keys(db, vaulted)
            [row] = loaded.rows
            assert loaded.effective_state(row) == "active"
            assert loaded.keyring.encrypting_key_id is not None
            assert vault.unsealed == 1
            [plain_row] = load_keys(db, plain).rows
            assert plain_row.custody == "master-key" and unseal(plain_row) is not None
            assert vault.unsealed == 1
    finally:
        sealing.extensions["db_engine"].dispose()
        reading.extensions["db_engine"].dispose()


def test_an_unknown_configured_backend_fails_start_up_naming_the_known_ones(
    app_config: dict,
) -> None:
    """A typo in KEY_CUSTODY stops the portal at start-up instead of sealing nothing."""
    with pytest.raises(ConfigError) as caught:
        started(app_config, KEY_CUSTODY="vault")
    message = str(caught.value)
    assert "KEY_CUSTODY" in message and "'vault'" in message and "master-key" in message


def test_a_key_sealed_by_an_unknown_backend_is_unavailable_not_a_crash(
    app: Flask, client, orgs: dict, login_as, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored custody name this installation lacks: the key is unavailable, pages still work."""
    org_id = orgs["a"]["id"]
    # A fresh name each run: the portal warns once per process about each unknown backend.
    gone = f"retired-hsm-{secrets.token_hex(3)}"
    with app.app_context():
        db = get_session()
        token = create_token(db, org_id, "reader")
        db.commit()
    headers = {"Authorization": f"Bearer {token}"}
    created = client.post("/api/v1/conversations", json={"title": "t"}, headers=headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    conv = created.get_json()["id"]
    with app.app_context():
        db = get_session()
        db.execute(update(OrgKey).where(OrgKey.company_id == org_id).values(custody=gone))
        db.commit()
        loaded = load_keys(db, org_id)
        [row] = loaded.rows
        assert loaded.effective_state(row) == "unavailable"
        assert gone in loaded.reason(row) and "master-key" in loaded.reason(row)
    assert gone in caplog.text
    read = client.get(f"/api/v1/conversations/{conv}", headers=headers)
    assert read.status_code == 200
    assert read.get_json()["reason"] == "key_unavailable"
    page = login_as("admin_a").get("/settings/compliance")
    assert page.status_code == 200 and "unavailable" in page.get_data(as_text=True)


def test_the_audit_signing_key_source_gives_the_key_chains_were_signed_with(
    app: Flask, orgs: dict
) -> None:
    """Same master key, same audit key: chains signed before the registry still verify."""
    master = base64.b64decode(app.config["BYOK_MASTER_KEY"])
    independent = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"byok-portal audit-chain"
    ).derive(master)
    assert independent.hex() == AUDIT_KEY_BEFORE
    assert app.extensions["audit_signing_key"] == independent
    assert MasterKeyAuditSource(master).signing_key() == independent
    assert MasterKeyAuditSource(None).signing_key() is None
    assert independent.hex() not in repr(app.extensions["audit_key_source"])
    with app.app_context():
        db = get_session()
        for i in range(3):
            emit(db, Action.KEY_TEST, actor="cli", company_id=orgs["a"]["id"], details={"i": i})
        db.commit()
        head = db.scalars(select(AuditHead).where(AuditHead.chain_id == orgs["a"]["id"])).one()
        message = f"{head.chain_id}:{head.seq}:{head.hash}".encode()
        assert head.signature == hmac.new(independent, message, hashlib.sha256).hexdigest()
        results = verify_all(db, independent, orgs["a"]["id"])
    assert results and all(r.ok for r in results)
