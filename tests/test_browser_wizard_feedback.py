"""Failed requests and stale messages in the wizard, in a real Chromium on the real demo.

Every non-2xx answer to an htmx request of a wizard form (a real 429 from the key-operation
limit; 403, 404 and 500 answers; a request that never got an answer) is explained in the
form that made it, replacing what the form said before. A field's message goes when the
field changes, and "Test passed" goes when the key is edited or a new key is generated.
"""

from __future__ import annotations

import base64
import re
import secrets

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import ACME, enable_by_mouse, open_compliance
from tests.support.processes import start_demo, stop_demo

pytestmark = pytest.mark.browser

KEY_OPS_PER_MINUTE = 3


@pytest.fixture
def demo_limited(app, app_config):
    """The demo with a low key-operation limit, so that a real 429 is quick to reach."""
    demo = start_demo(
        {
            "BYOK_HOME": app_config["BYOK_HOME"],
            "DATABASE_URL": app_config["DATABASE_URL"],
            "REDIS_URL": app_config["REDIS_URL"],
            "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
            "RATELIMIT_KEY_OPERATIONS": f"{KEY_OPS_PER_MINUTE}/minute",
        }
    )
    try:
        yield demo
    finally:
        stop_demo(demo)


@pytest.fixture
def context(browser):
    """A fresh browser profile."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def b64key() -> str:
    """A fresh key as base64."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_a_real_429_replaces_the_stale_message_with_the_wait(context, demo_limited):
    page = open_compliance(context, demo_limited, ACME)
    current = b64key()
    enable_by_mouse(page, current, demo_limited.logins[ACME])
    page.locator("#rotate-current_key").fill(b64key())
    page.locator("#rotate-new_key").fill(b64key())
    stale = page.locator("#rotate-current_key-feedback")
    # Key operations share one allowance per admin: Test Key and Save & Enable used two.
    for _ in range(KEY_OPS_PER_MINUTE - 2):
        with page.expect_response(lambda r: r.url.endswith("/rotate/test")) as answer:
            page.get_by_role("button", name="Test Keys").click()
        assert answer.value.status == 422
    expect(stale).to_contain_text("This is not the active key")
    with page.expect_response(lambda r: r.url.endswith("/rotate/test")) as answer:
        page.get_by_role("button", name="Test Keys").click()
    assert answer.value.status == 429
    region = page.locator("#rotate-form-feedback")
    expect(region).to_have_text(re.compile(r"Too many key operations; try again in \d+ s\."))
    expect(region.get_by_role("alert")).to_have_count(1)
    wait = int(re.search(r"in (\d+) s", region.inner_text()).group(1))
    assert 1 <= wait <= 61  # a one-minute window, rounded up
    expect(stale).to_have_text("")
    expect(page.get_by_text("This is not the active key")).to_have_count(0)
    # The page itself was not replaced by an error page.
    expect(page.get_by_role("heading", name="Rotate Key")).to_be_visible()


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (403, "You are not allowed to do this (403)."),
        (404, "Not found (404)"),
        (500, "Something went wrong on the server (500)."),
    ],
)
def test_error_answers_are_explained_in_the_form(context, demo_server, status, says):
    page = open_compliance(context, demo_server, ACME)
    page.locator("#enable-key").fill("9f" * 32)
    page.get_by_role("button", name="Test Key").click()
    expect(page.locator("#enable-key-feedback")).to_contain_text("hex-encoded")
    page.route(
        "**/settings/compliance/byok/test",
        lambda route: route.fulfill(status=status, body="<p>server says no</p>"),
    )
    page.get_by_role("button", name="Test Key").click()
    region = page.locator("#enable-form-feedback")
    expect(region).to_contain_text(says)
    expect(page.locator("#enable-key-feedback")).to_have_text("")
    expect(page.get_by_text("server says no")).to_have_count(0)


def test_a_request_that_gets_no_answer_is_explained(context, demo_server):
    page = open_compliance(context, demo_server, ACME)
    page.route("**/settings/compliance/byok/test", lambda route: route.abort())
    page.locator("#enable-key").fill(b64key())
    page.get_by_role("button", name="Test Key").click()
    expect(page.locator("#enable-form-feedback")).to_contain_text("The portal could not be reached")
    page.unroute("**/settings/compliance/byok/test")
    page.get_by_role("button", name="Test Key").click()
    expect(page.get_by_test_id("tested-fingerprint")).to_be_visible()
    expect(page.locator("#enable-form-feedback")).to_have_text("")


def _test_passed(page: Page, text: str) -> None:
    """Paste a key and press Test Key until the fingerprint is shown."""
    page.locator("#enable-key").fill(text)
    page.get_by_role("button", name="Test Key").click()
    expect(page.locator("#enable-key-feedback")).to_contain_text("Test passed")


def test_field_messages_clear_when_the_field_changes(context, demo_server):
    page = open_compliance(context, demo_server, ACME)
    field = page.locator("#enable-key")
    field.fill("not a key!")
    page.get_by_role("button", name="Test Key").click()
    message = page.locator("#enable-key-feedback")
    expect(message).to_contain_text("not valid base64")
    expect(field).to_have_attribute("aria-invalid", "true")
    field.press("End")
    field.type("x")
    expect(message).to_have_text("")
    expect(field).not_to_have_attribute("aria-invalid", "true")


def test_test_passed_goes_when_the_key_is_edited_or_a_new_key_is_generated(context, demo_server):
    page = open_compliance(context, demo_server, ACME)
    message = page.locator("#enable-key-feedback")
    tested = page.locator("#enable-tested")
    text = b64key()
    _test_passed(page, text)
    assert tested.input_value()
    page.locator("#enable-key").press("End")
    page.keyboard.press("Backspace")
    expect(message).to_have_text("")
    assert tested.input_value() == ""
    _test_passed(page, text)
    page.get_by_role("button", name="Generate New Key").click()
    expect(page.get_by_test_id("generated-key")).to_be_visible()
    expect(message).to_have_text("")
    assert tested.input_value() == ""
    # Save & Enable now asks for a test again instead of enabling an untested key.
    page.locator("#enable-password").fill(demo_server.logins[ACME])
    page.get_by_role("button", name="Save & Enable").click()
    expect(message).to_contain_text("Test this key first")
    expect(page.get_by_test_id("byok-state")).to_contain_text("Off")
