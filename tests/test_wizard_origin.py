"""A key's origin: "generated" for any key this admin generated in this session, else "imported".

The session keeps the fingerprints of the keys generated (never a key), so generating a
second key does not turn the first one into an "imported" key.
"""

from __future__ import annotations

import base64
import json

from tests.support.html import parse_html
from tests.support.leaks import key_forms
from tests.support.web import PASSWORD
from tests.support.wizard import (  # noqa: F401 - fixtures
    admin,
    app_config,
    deployment,
    events,
    key_by_fp,
    new_key,
    session_cookie,
)


def test_first_of_two_generated_keys_is_enabled_as_generated(app, admin, orgs):  # noqa: F811
    key_a, fp_a = admin.generate()
    key_b, fp_b = admin.generate()
    assert fp_a != fp_b
    fp = admin.enable_ok(base64.b64encode(key_a).decode())
    assert fp == fp_a
    assert key_by_fp(app, orgs["a"]["id"], fp_a).origin == "generated"
    assert "generated here" in parse_html(admin.page()).find(id="byok-status").text()
    [enabled] = [e for e in events(app, "BYOK.enabled", orgs["a"]["id"]) if e.outcome == "success"]
    assert json.loads(enabled.details) == {"fingerprint": fp_a, "origin": "generated"}
    generated = [json.loads(e.details)["fingerprint"] for e in events(app, "BYOK.key_generated")]
    assert generated == [fp_a, fp_b]


def test_session_keeps_fingerprints_of_generated_keys_never_the_keys(app, admin):  # noqa: F811
    keys = [admin.generate() for _ in range(3)]
    kept = session_cookie(app, admin.client)
    stored = json.dumps(kept)
    for key, fp in keys:
        assert fp in stored
        assert not any(form.decode("latin-1") in stored for form in key_forms(key))


def test_pasted_foreign_key_is_imported_even_after_generating_keys(app, admin, orgs):  # noqa: F811
    admin.generate()
    admin.generate()
    _, text, fp = new_key()
    assert admin.enable_ok(text) == fp
    assert key_by_fp(app, orgs["a"]["id"], fp).origin == "imported"


def test_rotation_to_an_earlier_generated_key_records_it_as_generated(app, admin, orgs):  # noqa: F811
    _, current, _ = new_key()
    admin.enable_ok(current)
    key_a, fp_a = admin.generate()
    admin.generate()
    new_text = base64.b64encode(key_a).decode()
    data = {"current_key": current, "new_key": new_text}
    tested = admin.client.post(
        "/settings/compliance/rotate/test",
        data=data,
        headers={"HX-Request": "true", "X-CSRFToken": admin.token},
    )
    assert tested.status_code == 200, tested.get_data(as_text=True)
    started = admin.client.post(
        "/settings/compliance/rotate/start",
        data={**data, "tested_fingerprint": fp_a, "password": PASSWORD},
        headers={"HX-Request": "true", "X-CSRFToken": admin.token},
    )
    assert started.status_code == 200, started.get_data(as_text=True)
    assert "HX-Redirect" in started.headers
    assert key_by_fp(app, orgs["a"]["id"], fp_a).origin == "generated"
