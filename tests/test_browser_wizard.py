"""The BYOK wizard in a real headless Chromium, on the real ``byok-portal demo``.

Each step is done the way a person does it (clicks, typing, the clipboard, the keyboard), and
a screenshot of each step is saved into docs/screenshots/ for the README.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support.browser import ACME, VIEWPORT, enable_by_mouse, open_compliance, shot
from tests.support.wizard import INVALID_KEYS, fp_of

pytestmark = pytest.mark.browser

GLOBEX = "admin@globex-dedicated.example"
INITECH = "admin@initech-on-premise.example"


@pytest.fixture
def context(browser, demo_server):
    """A fresh browser profile (1200x900) that may use the clipboard on the demo."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo_server.url)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def tab_to(page: Page, target: Locator, limit: int = 80) -> None:
    """Press Tab until ``target`` has the focus (as a keyboard-only user gets there)."""
    for _ in range(limit):
        if target.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")


def storage(page: Page) -> str:
    """Everything the page keeps in localStorage and sessionStorage, as one string."""
    return page.evaluate(
        "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
    )


def test_generate_copy_paste_test_and_enable_with_the_keyboard_alone(context, demo_server):
    page = open_compliance(context, demo_server, ACME)
    expect(page.get_by_test_id("byok-state")).to_contain_text("Off")
    shot(page, "01-compliance.png")
    tab_to(page, page.get_by_role("button", name="Generate New Key"))
    page.keyboard.press("Enter")
    shown = page.get_by_test_id("generated-key")
    expect(shown).to_be_visible()
    key_text = shown.inner_text().strip()
    assert len(base64.b64decode(key_text, validate=True)) == 32
    fingerprint = page.get_by_test_id("generated-fingerprint").inner_text()
    assert fingerprint == fp_of(base64.b64decode(key_text))
    expect(page.get_by_text("It will not be shown again.")).to_be_visible()
    # Copy with the button, then paste into the key field from the clipboard.
    tab_to(page, page.get_by_role("button", name="Copy"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key_text
    tab_to(page, page.get_by_role("button", name="Download as file"))
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    saved = Path(download.value.path()).read_text()
    assert saved == key_text + "\n"
    assert download.value.suggested_filename == f"byok-key-{fingerprint.replace(':', '')}.txt"
    shot(page, "02-generated.png", "[data-testid=generated-key]")
    tab_to(page, page.locator("#enable-key"))
    page.keyboard.press("Control+V")
    assert page.locator("#enable-key").input_value() == key_text
    tab_to(page, page.get_by_role("button", name="Test Key"))
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("tested-fingerprint")).to_have_text(fingerprint)
    expect(page.locator("#enable-key-feedback")).to_contain_text("Test passed")
    tab_to(page, page.locator("#enable-password"))
    page.keyboard.type(demo_server.logins[ACME])
    shot(page, "03-tested.png", "#enable-key-feedback")
    tab_to(page, page.get_by_role("button", name="Save & Enable"))
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("byok-state")).to_have_text("On")
    expect(page.get_by_test_id("active-fingerprint")).to_have_text(fingerprint)
    status = page.locator("#byok-status")
    expect(status).to_contain_text("generated here")
    expect(status).to_contain_text(f"by {ACME}")
    expect(page.get_by_test_id("rotation-due")).to_contain_text("(every 90 days)")
    expect(page.get_by_role("status").first).to_contain_text(
        f"BYOK is enabled with key {fingerprint}"
    )
    assert key_text not in page.content()
    shot(page, "04-enabled.png")
    page.reload()
    expect(page.get_by_test_id("active-fingerprint")).to_have_text(fingerprint)


def test_each_invalid_key_kind_shows_its_message_next_to_the_field(context, demo_server):
    page = open_compliance(context, demo_server, ACME)
    field = page.locator("#enable-key")
    assert "enable-key-feedback" in field.get_attribute("aria-describedby").split()
    message = page.locator("#enable-key-feedback")
    for kind, text, says in INVALID_KEYS:
        field.fill(text)
        page.get_by_role("button", name="Test Key").click()
        for phrase in says:
            expect(message, kind).to_contain_text(phrase)
        expect(message.get_by_role("alert")).to_have_count(1)
        if text.strip():
            assert text.strip() not in page.content(), kind
        if kind == "hex":
            shot(page, "05-invalid-key.png", "#enable-key")
    expect(page.get_by_test_id("byok-state")).to_contain_text("Off")


def _openssl_key() -> str:
    """A key as ``openssl rand -base64 32`` prints it: base64 and a trailing newline."""
    if shutil.which("openssl"):
        out = subprocess.run(
            ["openssl", "rand", "-base64", "32"], capture_output=True, text=True, check=True
        ).stdout
    else:  # pragma: no cover - the same text without openssl
        out = base64.b64encode(secrets.token_bytes(32)).decode() + "\n"
    assert out.endswith("\n") and len(out) == 45
    return out


def test_import_an_openssl_key_with_trailing_newline_on_a_dedicated_org(context, demo_server):
    page = open_compliance(context, demo_server, GLOBEX)
    expect(page.get_by_test_id("deployment-tier")).to_have_text("Dedicated (isolated)")
    expect(page.get_by_test_id("byok-state")).to_contain_text("required for this deployment")
    pasted = _openssl_key()
    fingerprint = fp_of(base64.b64decode(pasted))
    assert enable_by_mouse(page, pasted, demo_server.logins[GLOBEX]) == fingerprint
    expect(page.locator("#byok-status")).to_contain_text("imported")
    expect(page.locator("summary", has_text="Disable BYOK")).to_have_count(0)
    expect(page.get_by_text("cannot be disabled")).to_be_visible()


def test_disable_with_slug_and_acknowledgement(context, demo_server):
    page = open_compliance(context, demo_server, ACME)
    key_text = base64.b64encode(secrets.token_bytes(32)).decode()
    fingerprint = enable_by_mouse(page, key_text, demo_server.logins[ACME])
    page.locator("summary", has_text="Disable BYOK").click()
    expect(page.get_by_test_id("disable-count")).to_have_text("0")
    page.locator("#disable-confirm_slug").fill("acme-org-community")
    page.locator("#disable-acknowledge").check()
    shot(page, "06-disable.png", "#disable-form")
    page.locator("#disable-acknowledge").uncheck()
    page.get_by_role("button", name="Disable BYOK").click()
    expect(page.locator("#disable-acknowledge-feedback")).to_have_text(
        "Confirm that your compliance and legal teams were consulted."
    )
    expect(page.get_by_test_id("byok-state")).to_have_text("On")
    page.locator("#disable-acknowledge").check()
    page.get_by_role("button", name="Disable BYOK").click()
    expect(page.get_by_test_id("byok-state")).to_have_text("Off")
    expect(page.get_by_role("status").first).to_contain_text("BYOK is disabled")
    row = page.locator(f"tr[data-fingerprint='{fingerprint}']")
    expect(row).to_contain_text("decrypt-only")


def api_token(app, slug: str) -> str:
    """Create a data-API token for a demo organisation (in the demo's database)."""
    from sqlalchemy import select

    from portal.chat.service import create_token
    from portal.db import get_session
    from portal.models import Organization

    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == slug))
        token = create_token(db, org.id, "browser test")
        db.commit()
    return token


def call_api(demo, token: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """Call the demo's data API over HTTP; return the status and the JSON answer."""
    request = urllib.request.Request(
        f"{demo.url}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_restore_the_saved_key_after_declaring_it_lost(app, context, demo_server):
    page = open_compliance(context, demo_server, INITECH)
    token = api_token(app, "initech-on-premise")
    assert call_api(demo_server, token, "/conversations", {"title": "t"})[0] == 409
    saved = base64.b64encode(secrets.token_bytes(32)).decode()
    fingerprint = enable_by_mouse(page, saved, demo_server.logins[INITECH])
    status, created = call_api(demo_server, token, "/conversations", {"title": "Board minutes"})
    assert status == 201
    conv = created["id"]
    page.locator("summary", has_text="Declare key lost").click()
    page.locator("#lost-confirm_slug").fill("initech-on-premise")
    page.get_by_role("button", name="Declare key lost").click()
    expect(page.get_by_role("status").first).to_contain_text(f"Key {fingerprint} is declared lost")
    row = page.locator(f"tr[data-fingerprint='{fingerprint}']")
    expect(row).to_contain_text("lost")
    assert call_api(demo_server, token, f"/conversations/{conv}")[1]["status"] == "unreadable"
    expect(page.get_by_role("heading", name="Restore key")).to_be_visible()
    expect(page.locator("#byok-status")).to_contain_text("unreadable until the key is restored")
    page.locator("#restore-key").fill(saved + "\n")
    shot(page, "07-restore.png", "#restore-h")
    stranger = base64.b64encode(secrets.token_bytes(32)).decode()
    page.locator("#restore-key").fill(stranger)
    page.get_by_role("button", name="Restore key").click()
    expect(page.locator("#restore-key-feedback")).to_contain_text(
        "No key of your organisation has fingerprint"
    )
    page.locator("#restore-key").fill(saved + "\n")
    page.get_by_role("button", name="Restore key").click()
    expect(page.get_by_role("status").first).to_contain_text(f"Key {fingerprint} is restored")
    expect(page.get_by_test_id("active-fingerprint")).to_have_text(fingerprint)
    expect(row).to_contain_text("active")
    assert saved not in page.content()
    status, read = call_api(demo_server, token, f"/conversations/{conv}")
    assert (status, read.get("title")) == (200, "Board minutes")


@pytest.fixture
def bfcache_context(browser, demo_server):
    """A browser profile with the back/forward cache on, as people's browsers have it.

    Playwright turns the cache off by default; a page restored from it would show whatever
    it held when it was left, so this is where a shown-once key could come back.
    """
    from tests.support.processes import CHROMIUM, CHROMIUM_ARGS

    own = browser.browser_type.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        ignore_default_args=["--disable-back-forward-cache"],
    )
    ctx = own.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()
    own.close()


def test_generated_key_is_gone_after_navigating_away_and_back(bfcache_context, demo_server):
    page = open_compliance(bfcache_context, demo_server, ACME)
    page.get_by_role("button", name="Generate New Key").click()
    shown = page.get_by_test_id("generated-key")
    expect(shown).to_be_visible()
    key_text = shown.inner_text().strip()
    assert key_text in page.content()
    assert key_text not in storage(page)
    page.get_by_role("link", name="Audit Log").click()
    page.wait_for_url("**/settings/audit")
    page.go_back(wait_until="commit")
    page.wait_for_url("**/settings/compliance", wait_until="commit")
    expect(page.get_by_role("button", name="Generate New Key")).to_be_visible()
    assert key_text not in page.content()
    assert key_text not in storage(page)
    page.go_forward(wait_until="commit")
    page.wait_for_url("**/settings/audit", wait_until="commit")
    # Let the restored page become the active one before the next history step: going back
    # while Chromium is still swapping it in fails with "Not attached to an active page".
    expect(page.get_by_role("heading", name="Audit Log")).to_be_visible()
    page.go_back(wait_until="commit")
    page.wait_for_url("**/settings/compliance", wait_until="commit")
    expect(page.get_by_role("heading", name="BYOK Configuration")).to_be_visible()
    assert key_text not in page.content()
    assert key_text not in storage(page)
