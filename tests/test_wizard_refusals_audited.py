"""Every refused key operation is an audit event, from the wizard and from the CLI.

A refusal is recorded under the operation's action with outcome ``failure`` and non-secret
details: the reason code (and a fingerprint or state where that says which key), never any
form of the key itself.
"""

from __future__ import annotations

import base64
import json

from portal import crypto
from tests.support.html import feedback
from tests.support.leaks import key_forms, scan_database
from tests.support.rotation import b64, enable_byok, run_worker, seed
from tests.support.web import PASSWORD
from tests.support.wizard import (  # noqa: F401 - fixtures
    REQUIRED_MESSAGE,
    add_org,
    admin,
    app_config,
    deployment,
    events,
    key_by_fp,
    new_key,
    sign_in,
)

ROTATE = "/settings/compliance/rotate"


def failures(app, action: str, company_id) -> list[dict]:
    """Return the details of the refused (failure) events of an action, oldest first."""
    return [
        json.loads(e.details) for e in events(app, action, company_id) if e.outcome == "failure"
    ]


def assert_no_key_in_events(app, company_id, keys: list[bytes], texts: list[str] = ()) -> None:
    """No raw, base64 or hex form of any key (nor any pasted text) is in any event's details."""
    for event in events_of(app, company_id):
        for key in keys:
            for form in key_forms(key):
                assert form.decode("latin-1") not in event.details, event.action
        for text in texts:
            assert text.strip() not in event.details, event.action
    assert scan_database(app, keys) == []


def events_of(app, company_id) -> list:
    """Every audit event of an organisation."""
    from sqlalchemy import select

    from portal.audit.models import AuditEvent
    from portal.db import get_session

    with app.app_context():
        db = get_session()
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.company_id == company_id)))
        db.expunge_all()
        return rows


def rotate_post(wizard, step: str, data: dict):
    """POST a Rotate Key step as htmx."""
    return wizard.client.post(
        f"{ROTATE}/{step}",
        data=data,
        headers={"HX-Request": "true", "X-CSRFToken": wizard.token},
    )


# --- Test Keys (rotation) with a wrong current key -----------------------------------------


def test_each_test_keys_with_a_wrong_current_key_is_an_audited_failure(app, admin, orgs):  # noqa: F811
    org_id = orgs["a"]["id"]
    current, current_text, current_fp = new_key()
    admin.enable_ok(current_text)
    wrong = [new_key() for _ in range(3)]
    fresh, fresh_text, _ = new_key()
    for _, text, _ in wrong:
        response = rotate_post(admin, "test", {"current_key": text, "new_key": fresh_text})
        assert response.status_code == 422
        assert "This is not the active key" in feedback(
            response.get_data(as_text=True), "rotate", "current_key"
        )
    assert (
        failures(app, "BYOK.key_test", org_id)
        == [{"reason": "not_active", "step": "rotation", "field": "current_key"}] * 3
    )
    assert_no_key_in_events(app, org_id, [current, fresh] + [k for k, _, _ in wrong])
    assert current_fp  # the active key stays as it was
    assert failures(app, "BYOK.rotation_started", org_id) == []


def test_perform_rotation_refusals_are_audited(app, admin, orgs):  # noqa: F811
    org_id = orgs["a"]["id"]
    current, current_text, _ = new_key()
    admin.enable_ok(current_text)
    wrong, wrong_text, _ = new_key()
    fresh, fresh_text, fresh_fp = new_key()
    untested = rotate_post(
        admin,
        "start",
        {"current_key": current_text, "new_key": fresh_text, "password": PASSWORD},
    )
    assert untested.status_code == 422
    wrong_current = rotate_post(
        admin,
        "start",
        {
            "current_key": wrong_text,
            "new_key": fresh_text,
            "tested_fingerprint": fresh_fp,
            "password": PASSWORD,
        },
    )
    assert wrong_current.status_code == 422
    assert failures(app, "BYOK.rotation_started", org_id) == [
        {"reason": "untested", "field": "new_key"},
        {"reason": "not_active", "field": "current_key"},
    ]
    assert_no_key_in_events(app, org_id, [current, wrong, fresh])


def test_cli_rotate_with_a_wrong_current_key_is_an_audited_failure(app, cli, orgs):
    org_id = orgs["a"]["id"]
    current = enable_byok(app, org_id)
    wrong, new = crypto.generate_key(), crypto.generate_key()
    result = cli("key", "rotate", "--org", orgs["a"]["slug"], stdin=f"{b64(wrong)}\n{b64(new)}\n")
    assert result.returncode == 1 and "not the active key" in result.stderr
    refused = [e for e in events(app, "BYOK.rotation_started", org_id) if e.outcome == "failure"]
    assert [(e.actor_type, json.loads(e.details)) for e in refused] == [
        ("cli", {"reason": "not_active", "field": "current_key"})
    ]
    assert_no_key_in_events(app, org_id, [current, wrong, new])


# --- Restore with a retired or a 16-byte key -----------------------------------------------


def _retired_key(app, org_id) -> tuple[bytes, bytes]:
    """Rotate the organisation's BYOK key to a new one; return (retired key, active key)."""
    from portal.db import get_session
    from portal.models import Organization
    from portal.rotation.queue import enqueue_ranges
    from portal.rotation.start import start_rotation

    old = enable_byok(app, org_id)
    seed(app, org_id, conversations=1, messages=2, attachments=0)
    new = crypto.generate_key()
    with app.app_context():
        db = get_session()
        run = start_rotation(db, db.get(Organization, org_id), "cli", b64(old), b64(new))
        db.commit()
        run_id = run.id
    enqueue_ranges(app, run_id)
    run_worker(app)
    assert key_by_fp(app, org_id, crypto.fingerprint(crypto.key_id(old))).state == "retired"
    return old, new


AES128 = base64.b64encode(b"\x02" * 16).decode()


def test_restore_of_a_retired_or_16_byte_key_is_an_audited_failure(app, admin, orgs):  # noqa: F811
    org_id = orgs["a"]["id"]
    retired, active = _retired_key(app, org_id)
    response = admin.post("restore", {"key": b64(retired), "password": PASSWORD})
    assert response.status_code == 422
    assert "is retired; there is nothing to restore" in feedback(
        response.get_data(as_text=True), "restore", "key"
    )
    short = admin.post("restore", {"key": AES128, "password": PASSWORD})
    assert short.status_code == 422
    assert failures(app, "encryption_key.restore", org_id) == [
        {
            "reason": "not_restorable",
            "fingerprint": crypto.fingerprint(crypto.key_id(retired)),
            "state": "retired",
        },
        {"reason": "aes128"},
    ]
    assert_no_key_in_events(app, org_id, [retired, active, b"\x02" * 16], [AES128])


def test_cli_restore_of_a_retired_or_16_byte_key_is_an_audited_failure(app, cli, orgs):
    org_id = orgs["a"]["id"]
    retired, active = _retired_key(app, org_id)
    slug = orgs["a"]["slug"]
    again = cli("key", "restore", "--org", slug, stdin=b64(retired) + "\n")
    assert again.returncode == 1 and "is retired" in again.stderr
    short = cli("key", "restore", "--org", slug, stdin=AES128 + "\n")
    assert short.returncode == 1 and "AES-128" in short.stderr
    refused = [e for e in events(app, "encryption_key.restore", org_id) if e.outcome == "failure"]
    assert [(e.actor_type, json.loads(e.details)["reason"]) for e in refused] == [
        ("cli", "not_restorable"),
        ("cli", "aes128"),
    ]
    assert_no_key_in_events(app, org_id, [retired, active, b"\x02" * 16], [AES128])


# --- Disable where BYOK is required --------------------------------------------------------


def test_refused_disable_on_dedicated_is_audited(app, password_hash):
    org = add_org(app, password_hash, "dedicated")
    wizard = sign_in(app, org["admin"])
    key, text, fp = new_key()
    wizard.enable_ok(text)
    response = wizard.confirm("disable", org["slug"], acknowledge="y")
    assert response.status_code == 422
    assert REQUIRED_MESSAGE in feedback(response.get_data(as_text=True), "disable", "form")
    assert failures(app, "BYOK.disabled", org["id"]) == [{"reason": "byok_required"}]
    assert_no_key_in_events(app, org["id"], [key])


def test_cli_refused_disable_on_dedicated_and_without_i_understand_is_audited(
    app, cli, password_hash
):
    org = add_org(app, password_hash, "dedicated")
    key = enable_byok(app, org["id"])
    refused = cli("key", "disable", "--org", org["slug"], "--i-understand")
    assert refused.returncode == 1 and REQUIRED_MESSAGE in refused.stderr
    community = add_org(app, password_hash, "org_community")
    other = enable_byok(app, community["id"])
    no_flag = cli("key", "disable", "--org", community["slug"])
    assert no_flag.returncode == 1 and "--i-understand" in no_flag.stderr
    for company, reason in ((org["id"], "byok_required"), (community["id"], "not_acknowledged")):
        found = [e for e in events(app, "BYOK.disabled", company) if e.outcome == "failure"]
        assert [(e.actor_type, json.loads(e.details)) for e in found] == [
            ("cli", {"reason": reason})
        ]
    assert_no_key_in_events(app, org["id"], [key])
    assert_no_key_in_events(app, community["id"], [other])


# --- Save & Enable with an untested key, and the other refusals ----------------------------


def test_save_and_enable_with_an_untested_key_is_audited(app, admin, orgs):  # noqa: F811
    org_id = orgs["a"]["id"]
    key, text, fp = new_key()
    response = admin.enable(text, tested="")
    assert response.status_code == 422
    assert failures(app, "BYOK.enabled", org_id) == [{"reason": "untested", "fingerprint": fp}]
    assert [e for e in events(app, "BYOK.enabled", org_id) if e.outcome == "success"] == []
    assert_no_key_in_events(app, org_id, [key], [text])


def test_every_other_refused_step_is_one_audited_failure(app, admin, orgs):  # noqa: F811
    org_id, slug = orgs["a"]["id"], orgs["a"]["slug"]
    # Nothing to declare lost, revoke or disable yet; nothing to move.
    for action, name in (
        ("lost", "encryption_key.declared_lost"),
        ("revoke", "encryption_key.revoked"),
        ("disable", "BYOK.disabled"),
    ):
        assert admin.confirm(action, slug, acknowledge="y").status_code == 422
        assert failures(app, name, org_id) == [{"reason": "not_enabled"}], name
    key, text, _ = new_key()
    admin.enable_ok(text)
    for action, name in (
        ("lost", "encryption_key.declared_lost"),
        ("revoke", "encryption_key.revoked"),
        ("disable", "BYOK.disabled"),
    ):
        assert admin.confirm(action, "not-the-slug", acknowledge="y").status_code == 422
        assert failures(app, name, org_id)[-1] == {"reason": "slug_mismatch"}, name
    assert admin.confirm("disable", slug).status_code == 422
    assert failures(app, "BYOK.disabled", org_id)[-1] == {"reason": "not_acknowledged"}
    again = admin.enable(text)
    assert again.status_code == 422
    assert failures(app, "BYOK.enabled", org_id)[-1]["reason"] == "already_enabled"
    assert_no_key_in_events(app, org_id, [key], [text])
