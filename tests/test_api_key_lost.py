"""A Dedicated organisation whose key was declared lost is told to restore it, not to enable
BYOK: the API's refusal names the lost key and the way back."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask

from portal import crypto
from portal.db import get_session
from portal.keys import operations as ops
from portal.models import Organization
from portal.orgs import create_org
from tests.support.api import Api, assert_error, make_token
from tests.support.rotation import b64, enable_byok


def dedicated_org(app: Flask, tier: str) -> tuple[uuid.UUID, str]:
    """Create an isolated-tier organisation and return its id and slug."""
    with app.app_context():
        db = get_session()
        org = create_org(db, f"Isolated {tier}", tier)
        db.commit()
        return org.id, org.slug


@pytest.mark.parametrize("tier", ["dedicated", "on_prem"])
def test_writes_after_a_declared_key_loss_say_the_key_is_lost_and_how_to_restore_it(app, tier):
    org_id, slug = dedicated_org(app, tier)
    api = Api(app.test_client(), make_token(app, org_id))
    before = assert_error(api.post_json("/conversations", {"title": "x"}), 409, "byok_required")
    assert "lost" not in before["message"]
    key = enable_byok(app, org_id)
    conv = api.conversation("under the key")
    with app.app_context():
        db = get_session()
        ops.declare_lost(db, db.get(Organization, org_id), "cli", slug)
        db.commit()
    fp = crypto.fingerprint(crypto.key_id(key))
    for response in (
        api.post_json("/conversations", {"title": "x"}),
        api.post_json(f"/conversations/{conv}/messages", {"body": "x", "author": "a"}),
    ):
        message = assert_error(response, 409, "byok_required")["message"]
        assert "declared lost" in message and fp in message, message
        assert "Restore key" in message and "Compliance Policies" in message, message
        assert "same key" in message, message
        assert "must enable its own encryption key" not in message
    with app.app_context():
        db = get_session()
        ops.restore(db, db.get(Organization, org_id), "cli", b64(key))
        db.commit()
    api.message(conv, "stored again after the restore")


def test_writes_after_the_key_access_was_revoked_say_so(app):
    org_id, slug = dedicated_org(app, "dedicated")
    api = Api(app.test_client(), make_token(app, org_id))
    enable_byok(app, org_id)
    with app.app_context():
        db = get_session()
        ops.revoke(db, db.get(Organization, org_id), "cli", slug)
        db.commit()
    response = api.post_json("/conversations", {"title": "x"})
    assert response.status_code in (409, 503), response.get_json()
    message = response.get_json()["message"]
    assert "revoked" in message and "Restore key" in message, message
