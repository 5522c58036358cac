"""The status panel's "N items written before BYOK was enabled" counts only those items.

Issue 11, point 5: it counted every item under a platform key, so items written while the
key was lost (a platform key encrypts then) were labelled as written before BYOK.
"""

from __future__ import annotations

import re

from portal import crypto
from portal.chat import service as chat
from portal.db import get_session
from portal.keys import operations as ops
from portal.models import Organization
from tests.support.rotation import b64, enable_byok

PAGE = "/settings/compliance"


def test_platform_items_label_counts_only_items_written_before_byok(app, orgs, login_as):
    org_a = orgs["a"]["id"]
    slug = orgs["a"]["slug"]
    with app.app_context():
        db = get_session()
        conv = chat.create_conversation(db, org_a, "before", {})
        chat.add_message(db, conv, "user", "written before BYOK")
        db.commit()
    k1 = enable_byok(app, org_a)
    with app.app_context():
        db = get_session()
        ops.declare_lost(db, db.get(Organization, org_a), "cli", slug)
        db.commit()
    with app.app_context():
        db = get_session()
        conv = chat.create_conversation(db, org_a, "while lost", {})
        chat.add_message(db, conv, "user", "written while the key was lost")
        chat.add_message(db, conv, "user", "also while lost")
        db.commit()
    with app.app_context():
        db = get_session()
        ops.restore(db, db.get(Organization, org_a), "cli", b64(k1))
        db.commit()
    with app.app_context():
        db = get_session()
        status = ops.status(db, db.get(Organization, org_a))
        assert status.byok_enabled and status.active.key_id == crypto.key_id(k1).hex()
        assert status.platform_items == 2  # the conversation and message from before BYOK
    html = login_as("admin_a").get(PAGE).get_data(as_text=True)
    label = re.search(r'data-testid="platform-items">([^<]*)<', html)
    assert label and label.group(1).startswith("2 items written before BYOK was enabled")
