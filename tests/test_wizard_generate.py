"""The BYOK wizard's Generate New Key and Test Key steps, and how pasted keys are validated."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from tests.support.html import by_testid, feedback, parse_html
from tests.support.leaks import key_forms, scan_database, scan_redis
from tests.support.web import PASSWORD
from tests.support.wizard import (
    INVALID_KEYS,
    app_config,  # noqa: F401 - fixture: the wizard's settings
    events,
    fp_of,
    new_key,
    org_keys,
    session_cookie,
)

# --- generate -------------------------------------------------------------------------------


def test_generate_shows_a_fresh_32_byte_key_once_in_a_history_free_no_store_element(admin):
    response = admin.post("generate")
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    html = response.get_data(as_text=True)
    tree = parse_html(html)
    shown = tree.find(data_testid="generated-key")
    key = base64.b64decode(shown.text(), validate=True)
    assert len(key) == 32
    assert by_testid(html, "generated-fingerprint") == fp_of(key)
    assert any(a.attrs.get("hx-history") == "false" for a in shown.ancestors())
    assert "It will not be shown again" in html
    assert tree.find(data_copy_target="generated-key") is not None
    assert tree.find(data_download_target="generated-key") is not None
    again, _ = admin.generate()
    assert again != key


def test_generate_as_plain_post_shows_the_key_on_the_full_page(admin):
    response = admin.post("generate", htmx=False)
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    html = response.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in html
    key = base64.b64decode(by_testid(html, "generated-key"), validate=True)
    assert by_testid(html, "generated-fingerprint") == fp_of(key)
    shown = parse_html(html).find(data_testid="generated-key")
    assert any(a.attrs.get("hx-history") == "false" for a in shown.ancestors())


def test_generated_key_is_kept_nowhere_in_database_redis_session_or_logs(app, admin, orgs, caplog):
    caplog.set_level(logging.DEBUG)
    key, fp = admin.generate()
    assert scan_database(app, [key]) == []
    assert scan_redis(app, [key]) == []
    cookie = session_cookie(app, admin.client)
    assert cookie.get("generated_fingerprints") == [fp]
    assert not any(form.decode("latin-1") in json.dumps(cookie) for form in key_forms(key))
    assert not any(form.decode("latin-1") in caplog.text for form in key_forms(key))
    # Only the fingerprint is audited, and no key row exists until the key is pasted back.
    generated = events(app, "BYOK.key_generated", orgs["a"]["id"])
    assert [json.loads(e.details) for e in generated] == [{"fingerprint": fp}]
    assert fp not in {k.fingerprint for k in org_keys(app, orgs["a"]["id"])}
    # The section reloaded afterwards does not show it again.
    assert base64.b64encode(key).decode() not in admin.page()


# --- import validation ----------------------------------------------------------------------


def _secret_parts(text: str) -> list[str]:
    """The parts of a pasted text that must not be echoed: the text and its long runs."""
    stripped = text.strip()
    if not stripped:
        return []
    parts = [stripped]
    for token in stripped.replace('"', " ").replace("\n", " ").split():
        if len(token) >= 12 and not token.startswith("-----"):
            parts.append(token)
    return parts


@pytest.mark.parametrize("step", ["test", "enable"])
@pytest.mark.parametrize(
    ("text", "says"), [(t, s) for _, t, s in INVALID_KEYS], ids=[i for i, *_ in INVALID_KEYS]
)
def test_each_invalid_key_kind_is_refused_next_to_the_field_without_echo(
    app, admin, orgs, step, text, says
):
    data = {"key": text, "tested_fingerprint": "", "password": PASSWORD}
    response = admin.post(step, data)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    message = feedback(html, "enable", "key")
    for phrase in says:
        assert phrase in message
    for part in _secret_parts(text):
        assert part not in html
    assert by_testid(admin.page(), "byok-state").startswith("Off")
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


@pytest.mark.parametrize(
    ("text", "says"), [(t, s) for _, t, s in INVALID_KEYS], ids=[i for i, *_ in INVALID_KEYS]
)
def test_each_invalid_key_kind_is_refused_on_restore_with_the_same_message(admin, text, says):
    response = admin.post("restore", {"key": text, "password": PASSWORD})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    message = feedback(html, "restore", "key")
    for phrase in says:
        assert phrase in message
    for part in _secret_parts(text):
        assert part not in html


@pytest.mark.parametrize(
    "wrap",
    ["{}\n", "  {}  ", "\r\n\t{}\r\n", "{}\n\n"],
    ids=["openssl-newline", "spaces", "crlf-tabs", "blank-lines"],
)
def test_key_with_surrounding_whitespace_and_trailing_newline_is_accepted(admin, wrap):
    key, text, fp = new_key()
    pasted = wrap.format(text)
    response = admin.test_key(pasted)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert by_testid(response.get_data(as_text=True), "tested-fingerprint") == fp
    enabled = admin.enable(pasted)
    assert enabled.status_code == 200, enabled.get_data(as_text=True)
    assert by_testid(enabled.get_data(as_text=True), "active-fingerprint") == fp


# --- test key -------------------------------------------------------------------------------


def test_test_key_shows_result_and_fingerprint_and_arms_save_and_enable(admin):
    _, text, fp = new_key()
    response = admin.test_key(text)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    ok = feedback(html, "enable", "key")
    assert "Test passed" in ok and fp in ok
    tested = parse_html(html).find(id="enable-tested")
    assert tested.attrs["value"] == fp
    assert tested.attrs.get("hx-swap-oob") == "true"
    assert text not in html


def test_test_key_records_exactly_one_audit_event_with_the_fingerprint_only(app, admin, orgs):
    key, text, fp = new_key()
    assert admin.test_key(text + "\n").status_code == 200
    tests = events(app, "BYOK.key_test", orgs["a"]["id"])
    assert len(tests) == 1
    assert tests[0].outcome == "success"
    assert tests[0].actor_label == orgs["users"]["admin_a"]
    assert json.loads(tests[0].details) == {"fingerprint": fp}
    assert scan_database(app, [key]) == []
    # Testing stores no key: nothing is enabled by a test.
    assert fp not in {k.fingerprint for k in org_keys(app, orgs["a"]["id"])}


def test_failed_test_key_is_audited_with_the_reason_only(app, admin, orgs):
    response = admin.test_key("9f" * 32)
    assert response.status_code == 422
    tests = events(app, "BYOK.key_test", orgs["a"]["id"])
    assert [(e.outcome, json.loads(e.details)) for e in tests] == [("failure", {"reason": "hex"})]
