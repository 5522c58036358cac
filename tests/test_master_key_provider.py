"""The installation master key in Transit or an HSM: keys sealed through it, moved onto it.

Against real services (OpenBao Transit, SoftHSM2): with MASTER_KEY_PROVIDER set no key file is
made, new keys are sealed by the service, ``custody migrate`` re-seals the file-sealed keys
(audited) so the portal reads everything once the file is gone, a stopped service makes keys
unavailable without stopping start-up, and a migration without a running target is refused.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from portal import create_app
from portal.audit.actions import Action
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.keys.custody import CustodyError, KeyAccessRevoked, KeyServiceUnreachable
from portal.keys.models import OrgKey
from portal.keys.service import KeyUnavailable, custody, seal_context
from portal.orgs import create_org
from tests.support.api import Api
from tests.support.cli import Ran, invoke
from tests.support.web import MASTER_KEY_B64

TRANSIT = "master-key:vault-transit"
AUDIT_FILE = "audit-signing.key.wrapped"


def in_service(app_config: dict, service: Any, ref: str) -> dict:
    """Settings that put the master key in service under ref, with none in the environment."""
    return {
        **app_config,
        **service.config,
        "BYOK_MASTER_KEY": None,
        "MASTER_KEY_PROVIDER": service.provider,
        "MASTER_KEY_REF": ref,
        "KMS_BREAKER_SECONDS": 1,
    }


@pytest.fixture
def transit_master(app_config: dict, vault_service: Any) -> str:
    """Put this test's master key in Transit (before ``app`` starts); return its name."""
    ref = vault_service.new_key()
    app_config.update(in_service(app_config, vault_service, ref))
    return ref


@pytest.fixture
def initialised(transit_master: str, app: Flask) -> Ran:
    """Run ``byok-portal init`` on the app, as an installation does before use."""
    ran = invoke(app, "init")
    assert ran.returncode == 0, ran.stderr
    return ran


@pytest.fixture
def master_file(app_config: dict) -> Path:
    """The master key in a file in BYOK_HOME (not in the environment), as installations keep it."""
    path = Path(app_config["BYOK_MASTER_KEY_FILE"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(MASTER_KEY_B64 + "\n")
    path.chmod(0o600)
    app_config["BYOK_MASTER_KEY"] = None
    return path


@pytest.fixture(params=["vault_service", "pkcs11_service"])
def key_service(request: pytest.FixtureRequest) -> Any:
    """Each real master key service in turn."""
    return request.getfixturevalue(request.param)


@contextmanager
def started(config: dict) -> Iterator[Flask]:
    """Start another app on the same database; its engine is closed afterwards."""
    other = create_app(config)
    try:
        yield other
    finally:
        other.extensions["db_engine"].dispose()


def rows(app: Flask) -> list[OrgKey]:
    """Every stored key row."""
    with app.app_context():
        return list(get_session().scalars(select(OrgKey)))


def events(app: Flask, action: Action) -> list[AuditEvent]:
    """Every audit event of one action."""
    with app.app_context():
        return list(get_session().scalars(select(AuditEvent).where(AuditEvent.action == action)))


def message_bodies(api: Api, conv: str) -> list[Any]:
    """The bodies of a conversation's messages as the data API returns them."""
    return [m["body"] for m in api.read(conv)["messages"]]


def test_new_keys_are_sealed_through_transit_and_no_key_file_is_made(
    initialised: Ran, app: Flask, app_config: dict, orgs: dict, enable_byok
) -> None:
    """MASTER_KEY_PROVIDER=vault-transit: init makes no master.key, rows say who sealed them."""
    assert f"master key: vault-transit:{app_config['MASTER_KEY_REF']}" in initialised.stdout
    assert not Path(app_config["BYOK_MASTER_KEY_FILE"]).exists()
    audit_file = Path(app_config["BYOK_HOME"]) / AUDIT_FILE
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600
    signing = app.extensions["audit_signing_key"]
    assert signing is not None and signing.hex() not in audit_file.read_text()
    key = enable_byok(orgs["a"]["id"])
    stored = rows(app)
    assert len(stored) == 3 and {r.custody for r in stored} == {TRANSIT}
    assert not any(r.sealed.startswith(b"SK\x01") or key in r.sealed for r in stored)
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("through transit")
    api.message(conv, "sealed by the service")
    # A fresh process has no cached key: it must unseal through Transit.
    with started(app_config) as fresh:
        assert fresh.extensions["audit_signing_key"] == signing
        assert message_bodies(Api.for_org(fresh, orgs["a"]["id"]), conv) == [
            "sealed by the service"
        ]
        verified = invoke(fresh, "audit", "verify", "--json")
        assert verified.returncode == 0, verified.stdout
        assert json.loads(verified.stdout)["signatures_checked"] is True
    assert not Path(app_config["BYOK_MASTER_KEY_FILE"]).exists()


def test_a_key_sealed_for_one_organisation_does_not_unseal_for_another(
    transit_master: str, app: Flask, orgs: dict
) -> None:
    """The seal context is bound into the Transit wrap: a moved sealed key is an integrity error."""
    [row_a] = [r for r in rows(app) if r.company_id == orgs["a"]["id"]]
    with app.app_context():
        backend = custody()
        assert backend.name == TRANSIT
        assert backend.unseal(row_a.sealed, seal_context(row_a.company_id, row_a.key_id))
        with pytest.raises(CustodyError) as caught:
            backend.unseal(row_a.sealed, seal_context(orgs["b"]["id"], row_a.key_id))
        assert not isinstance(caught.value, KeyAccessRevoked | KeyServiceUnreachable)


def test_custody_migrate_moves_sealed_keys_from_the_key_file_into_the_service(
    master_file: Path, app: Flask, app_config: dict, orgs: dict, enable_byok, key_service: Any
) -> None:
    """File-sealed keys are re-sealed by the service, audited, and read without the file."""
    byok_key = enable_byok(orgs["a"]["id"])
    apis = {o: Api.for_org(app, orgs[o]["id"]) for o in ("a", "b")}
    convs = {o: apis[o].conversation(f"before {o}") for o in apis}
    for o, conv in convs.items():
        apis[o].message(conv, f"written under the file master key by {o}")
    with app.app_context():
        db = get_session()
        # A retired key keeps no sealed copy: there is nothing to re-seal.
        db.add(
            OrgKey(
                company_id=orgs["b"]["id"],
                key_id="00" * 8,
                state="retired",
                origin="generated",
                sealed=None,
                custody="master-key",
                created_by="test",
            )
        )
        db.commit()
    file_audit_key = app.extensions["audit_signing_key"]
    moved = in_service(app_config, key_service, key_service.new_key())
    target = f"master-key:{key_service.provider}"
    with started(moved) as during:
        assert during.extensions["custody"].name == target
        before = json.loads(invoke(during, "custody", "status", "--json").stdout)
        assert before["awaiting_migration"] == 3 and before["file_master_key_loaded"] is True
        ran = invoke(during, "custody", "migrate", "--json")
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout)
    assert result["to"] == target and result["from"] == "master-key"
    assert (result["resealed"], result["skipped"], result["unreadable"]) == (3, 1, [])
    assert {r.custody for r in rows(app) if r.sealed is not None} == {target}
    audited = {e.company_id: e for e in events(app, Action.CUSTODY_MIGRATED)}
    assert set(audited) == {orgs["a"]["id"], orgs["b"]["id"]}
    details = {o: json.loads(audited[orgs[o]["id"]].details) for o in ("a", "b")}
    moved_from = {"from": "master-key", "to": target, "unreadable": 0}
    assert details["a"] == {**moved_from, "resealed": 2, "skipped": 0}
    assert details["b"] == {**moved_from, "resealed": 1, "skipped": 1}
    assert all(e.outcome == "success" and e.actor_label == "cli" for e in audited.values())
    assert byok_key.hex() not in json.dumps(details)
    master_file.unlink()
    with started(moved) as after:
        assert "master-key" not in after.extensions["custody_backends"]
        assert after.extensions["audit_signing_key"] == file_audit_key
        for o, conv in convs.items():
            assert message_bodies(Api.for_org(after, orgs[o]["id"]), conv) == [
                f"written under the file master key by {o}"
            ]
        verified = invoke(after, "audit", "verify", "--json")
        assert verified.returncode == 0, verified.stdout
        assert json.loads(verified.stdout)["signatures_checked"] is True
        status = json.loads(invoke(after, "custody", "status", "--json").stdout)
        assert status["awaiting_migration"] == 0 and status["sealed_keys"] == {target: 3}
        assert status["master_key_service"]["state"] == "reachable"


def test_a_stopped_master_key_service_makes_keys_unavailable_without_stopping_start_up(
    initialised: Ran, app: Flask, app_config: dict, orgs: dict, vault_service: Any
) -> None:
    """Transit down: the portal starts, items say key_service_unreachable, writes get 503."""
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("kept")
    api.message(conv, "kept through an outage")
    vault_service.stop()
    try:
        with started(app_config) as down:
            assert down.extensions["audit_signing_key"] is None
            assert "could not be used" in down.extensions["audit_key_source"].problem
            cut_off = Api.for_org(down, orgs["a"]["id"])
            assert message_bodies(cut_off, conv) == [
                {"status": "unavailable", "reason": "key_service_unreachable"}
            ]
            refused = cut_off.post_message(conv, "more")
            assert refused.status_code == 503, refused.get_json()
            assert refused.get_json()["error"] == "key_service_unreachable"
            assert int(refused.headers["Retry-After"]) >= 1
            ran = invoke(down, "custody", "migrate")
            assert ran.returncode == 1 and "nothing was re-sealed" in ran.stderr
    finally:
        vault_service.start()
    with started(app_config) as back:
        assert message_bodies(Api.for_org(back, orgs["a"]["id"]), conv) == [
            "kept through an outage"
        ]


def test_custody_migrate_refuses_when_the_target_is_not_running(
    app: Flask, app_config: dict, orgs: dict
) -> None:
    """No master key service configured: refused naming the setting, audited, nothing moved."""
    for args in (("custody", "migrate"), ("custody", "migrate", "--to", "vault-transit")):
        ran = invoke(app, *args)
        assert ran.returncode == 1
        assert "MASTER_KEY_PROVIDER" in ran.stderr and "MASTER_KEY_REF" in ran.stderr
    half = {
        **app_config,
        "MASTER_KEY_PROVIDER": "vault-transit",
        "MASTER_KEY_REF": "master",
        "VAULT_ADDR": None,
    }
    with started(half) as unconfigured:
        ran = invoke(unconfigured, "custody", "migrate")
        assert ran.returncode == 1 and "not configured" in ran.stderr, ran.stderr
        with unconfigured.app_context():
            db = get_session()
            with pytest.raises(KeyUnavailable, match="not configured"):
                create_org(db, "Sealed Nowhere", "org_community")
            db.rollback()
    assert {r.custody for r in rows(app)} == {"master-key"}
    refusals = events(app, Action.CUSTODY_MIGRATED)
    assert len(refusals) == 3
    assert all(e.outcome == "failure" and e.company_id is None for e in refusals)
