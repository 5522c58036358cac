"""Hold your own key, in a real headless Chromium on the real ``byok-portal demo``.

The issue's "Done when": an admin connects an OpenBao Transit key in the wizard (Test, then
Save & Enable with the password prompt), data is written and read through the data API, the
key is revoked in OpenBao and within KMS_CACHE_SECONDS the data API reports the items
unavailable with reason ``key_access_revoked`` and refuses writes with 403, the status panel
shows access denied, and once access is restored the data reads again. Screenshots go to
docs/screenshots/connect-*.png.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from playwright.sync_api import expect
from sqlalchemy import select

from portal.db import get_session
from portal.models import Organization
from tests.support.api import Api, make_token
from tests.support.browser import ACME, VIEWPORT, open_compliance, shot
from tests.support.keyservices import pointed_at
from tests.support.processes import Demo, start_demo, stop_demo

pytestmark = pytest.mark.browser

CACHE = 2
SERVICE = "vault_service"
REF_LABELS = {
    "vault-transit": "Transit key name",
    "pkcs11": "PKCS#11 key label",
    "aws-kms": "KMS key ARN",
}


@pytest.fixture(autouse=True)
def keyservice(request: pytest.FixtureRequest, app_config: dict):
    """OpenBao Transit, with this process's portal (the data API here) pointed at it."""
    running = pointed_at(
        request, app_config, SERVICE, KMS_CACHE_SECONDS=CACHE, KMS_BREAKER_SECONDS=1
    )
    return running


@pytest.fixture
def demo(app, app_config: dict, keyservice) -> Iterator[Demo]:
    """The demo (the admin's browser talks to it), pointed at the same key service."""
    env = {
        "BYOK_HOME": app_config["BYOK_HOME"],
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
        "RQ_QUEUE": "byok-connect-" + uuid.uuid4().hex[:10],
        "KMS_CACHE_SECONDS": str(CACHE),
        "KMS_BREAKER_SECONDS": "1",
        **{name: str(value) for name, value in keyservice.config.items()},
    }
    running = start_demo(env)
    try:
        yield running
    finally:
        stop_demo(running)


@pytest.fixture
def context(browser, demo):
    """A fresh browser profile (1200x900)."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def acme_api(app: Flask) -> Api:
    """A data-API client of the demo's Acme Org Community (served by this process's app)."""
    with app.app_context():
        org_id = get_session().scalar(
            select(Organization.id).where(Organization.slug == "acme-org-community")
        )
    return Api(app.test_client(), make_token(app, org_id, "connect browser test"))


def first_body(api: Api, conv: str) -> object:
    """The first message's body as the data API reports it (text, or why it is unreadable)."""
    response = api.get(f"/conversations/{conv}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["messages"][0]["body"]


def wait_for(check, seconds: float) -> float:
    """Poll check() every 50 ms until it is true; return how long that took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not true within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_connect_a_transit_key_revoke_it_in_openbao_and_restore_it(app, context, demo, keyservice):
    ref = keyservice.new_key()
    page = open_compliance(context, demo, ACME)
    expect(page.get_by_test_id("byok-state")).to_contain_text("Off")
    page.locator("summary", has_text="Connect a key in your key service").click()
    form = page.locator("#connect-form")
    expect(form.locator("#connect-provider option")).to_have_count(1)
    form.locator("#connect-provider").select_option(keyservice.provider)
    field = form.get_by_label(REF_LABELS[keyservice.provider])
    field.fill(ref)
    shot(page, "connect-form.png", "#connect")

    # A key that does not exist is refused at Test with what the key service said.
    field.fill(ref + "-missing")
    form.get_by_role("button", name="Test", exact=True).click()
    expect(page.locator("#connect-key_ref-feedback")).to_contain_text("refused access")
    expect(page.locator("#connect-key_ref")).to_have_attribute("aria-invalid", "true")

    field.fill(ref)
    form.get_by_role("button", name="Test", exact=True).click()
    expect(page.locator("#connect-key_ref-feedback")).to_contain_text("Test passed")
    expect(page.get_by_test_id("key-version")).to_be_visible()
    if keyservice.provider == "vault-transit":
        expect(page.get_by_test_id("key-version")).to_have_text("1")
    form.locator("#connect-password").fill(demo.logins[ACME])
    shot(page, "connect-tested.png", "#connect-key_ref-feedback")
    form.get_by_role("button", name="Save & Enable").click()
    expect(page.get_by_test_id("byok-state")).to_have_text("On")
    expect(page.get_by_test_id("custody-key-ref")).to_have_text(ref)
    expect(page.get_by_test_id("key-service-state")).to_have_text("reachable")
    expect(page.get_by_role("status").first).to_contain_text("BYOK is enabled with your key")
    shot(page, "connect-enabled.png", "[data-testid=key-service-cache]")

    api = acme_api(app)
    created = api.create_conversation("Board minutes")
    assert created.status_code == 201, created.get_json()
    conv = created.get_json()["id"]
    assert api.post_message(conv, "only under our key").status_code == 201
    assert first_body(api, conv) == "only under our key"

    keyservice.revoke(ref)
    try:
        took = wait_for(lambda: first_body(api, conv) != "only under our key", CACHE + 3)
        assert took <= CACHE + 1.5, took
        assert first_body(api, conv) == {"status": "unavailable", "reason": "key_access_revoked"}
        refused = api.post_message(conv, "more")
        assert refused.status_code == 403
        assert refused.get_json()["error"] == "key_access_revoked"
        page.reload()
        expect(page.get_by_test_id("key-service-state")).to_contain_text("access denied")
        warning = page.get_by_test_id("key-service-warning")
        expect(warning).to_contain_text("comes back by itself")
        shot(page, "connect-denied.png", "[data-testid=key-service-warning]")
    finally:
        keyservice.restore(ref)
    wait_for(lambda: first_body(api, conv) == "only under our key", 10)
    assert api.post_message(conv, "after").status_code == 201
    page.reload()
    expect(page.get_by_test_id("key-service-state")).to_have_text("reachable")
    expect(page.get_by_test_id("key-service-warning")).to_have_count(0)
    # The rotate area explains Re-wrap and Full re-encryption for a key in a key service.
    expect(page.get_by_test_id("rotation-kinds")).to_contain_text("Re-wrap when you rotated")
    shot(page, "connect-rotate.png", "#rewrap-h")
