"""The wizard in a real Chromium with JavaScript turned off: plain forms, one paste.

Test Key answers with the whole page; the tested key must still be in its field, so Save &
Enable works without pasting it again.
"""

from __future__ import annotations

import base64
import secrets

import pytest
from playwright.sync_api import expect

from tests.support.wizard import fp_of

pytestmark = pytest.mark.browser

ACME = "admin@acme-org-community.example"


@pytest.fixture
def no_js(browser, demo_server):
    """A browser profile with JavaScript disabled."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=False)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def test_without_javascript_test_key_then_save_and_enable_needs_one_paste(no_js, demo_server):
    page = no_js.new_page()
    page.goto(f"{demo_server.url}/login")
    page.get_by_label("Email").fill(ACME)
    page.get_by_label("Password").fill(demo_server.logins[ACME])
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{demo_server.url}/settings/compliance")
    expect(page.get_by_test_id("byok-state")).to_contain_text("Off")
    text = base64.b64encode(secrets.token_bytes(32)).decode()
    fingerprint = fp_of(base64.b64decode(text))
    page.locator("#enable-key").fill(text)
    with page.expect_navigation():
        page.get_by_role("button", name="Test Key").click()
    expect(page.get_by_test_id("tested-fingerprint")).to_have_text(fingerprint)
    assert page.locator("#enable-key").input_value().strip() == text
    page.locator("#enable-password").fill(demo_server.logins[ACME])
    with page.expect_navigation():
        page.get_by_role("button", name="Save & Enable").click()
    expect(page.get_by_test_id("byok-state")).to_have_text("On")
    expect(page.get_by_test_id("active-fingerprint")).to_have_text(fingerprint)
    expect(page.get_by_role("status").first).to_contain_text(
        f"BYOK is enabled with key {fingerprint}"
    )
    assert text not in page.content()
