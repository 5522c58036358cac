"""The Audit Log in a real headless Chromium, on the real ``byok-portal demo``.

Key events are made the way people make them (the wizard's buttons, the ``key enable`` CLI),
then the admin filters, pages, goes back and forward, expands an event and exports CSV.
Screenshots go to docs/screenshots/audit-*.png.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
VIEWPORT = {"width": 1200, "height": 900}
ORG = "acme-org-community"
ADMIN = f"admin@{ORG}.example"


def demo_env(app_config: dict) -> dict[str, str]:
    """The environment the demo runs with, for the CLI to work on the same installation."""
    keys = ("BYOK_HOME", "DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY")
    return {**os.environ, **{k: app_config[k] for k in keys}}


def cli_enable(app_config: dict, key_text: str) -> subprocess.CompletedProcess:
    """Run ``byok-portal key enable`` with the key on standard input."""
    return subprocess.run(
        [sys.executable, "-m", "portal.cli", "key", "enable", "--org", ORG],
        input=key_text,
        env=demo_env(app_config),
        capture_output=True,
        text=True,
        timeout=60,
    )


def sign_in(page: Page, url: str, email: str, password: str) -> None:
    """Sign in through the login form."""
    page.goto(f"{url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")


def rows(page: Page):
    """The listed events."""
    return page.locator("ol.audit-events > li")


def actions(page: Page) -> list[str]:
    """The action names of the listed events, in page order."""
    return rows(page).locator("summary code").all_inner_texts()


def shot(page: Page, name: str, top: Locator | None = None) -> None:
    """Save a 1200x900 screenshot, of the page's top or scrolled to put ``top`` near it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if top is None:
        page.evaluate("window.scrollTo(0, 0)")
    else:
        top.evaluate("e => { e.scrollIntoView({block: 'start'}); window.scrollBy(0, -160); }")
    page.screenshot(path=str(SHOTS / name))


def test_admin_filters_pages_goes_back_expands_and_exports_the_audit_log(
    browser, demo_server, app_config
) -> None:
    key_text = base64.b64encode(secrets.token_bytes(32)).decode()
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    sign_in(page, demo_server.url, ADMIN, demo_server.logins[ADMIN])

    # Key events by the admin in the wizard: generate a key, test a broken one.
    page.get_by_role("link", name="Compliance Policies").first.click()
    page.get_by_role("button", name="Generate New Key").click()
    expect(page.get_by_test_id("generated-key")).to_be_visible()
    page.locator("#enable-key").fill("not a key")
    page.get_by_role("button", name="Test Key").click()
    expect(page.locator("#enable-key-feedback .error")).to_be_visible()
    # ...and by the CLI: a refused key, then a good one tested and enabled.
    assert cli_enable(app_config, "short\n").returncode == 1
    enabled = cli_enable(app_config, key_text + "\n")
    assert enabled.returncode == 0, enabled.stderr
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, demo_server.url, ADMIN, demo_server.logins[ADMIN])

    page.get_by_role("link", name="Audit Log").first.click()
    page.wait_for_url("**/settings/audit")
    expect(page.get_by_role("heading", name="Audit Log")).to_be_visible()
    page.goto(f"{demo_server.url}/settings/audit?limit=4")
    expect(rows(page)).to_have_count(4)
    assert actions(page) == ["auth.login", "auth.logout", "BYOK.enabled", "BYOK.key_test"]

    # Filter by type BYOK: the results change in place and the URL follows.
    page.get_by_label("Type").select_option("BYOK")
    page.wait_for_url(re.compile(r"/settings/audit\?type=BYOK&limit=4$"))
    expect(rows(page)).to_have_count(4)
    assert all(a.startswith("BYOK.") for a in actions(page))
    assert actions(page)[:2] == ["BYOK.enabled", "BYOK.key_test"]
    shot(page, "audit-filtered.png")

    # Then by actor (exact): only the admin's own BYOK events.
    page.get_by_label("Actor").fill(ADMIN)
    page.wait_for_url(re.compile(r"actor=admin(@|%40)acme-org-community\.example"))
    expect(rows(page)).to_have_count(2)
    assert actions(page) == ["BYOK.key_test", "BYOK.key_generated"]
    expect(rows(page).locator(".audit-actor").first).to_have_text(ADMIN)

    # Back restores the BYOK-only state (form and results), forward the actor filter again.
    page.go_back()
    page.wait_for_url(re.compile(r"\?type=BYOK&limit=4$"))
    expect(page.get_by_label("Actor")).to_have_value("")
    expect(page.get_by_label("Type")).to_have_value("BYOK")
    expect(rows(page)).to_have_count(4)
    page.go_forward()
    page.wait_for_url(re.compile(r"actor=admin(@|%40)acme"))
    expect(page.get_by_label("Actor")).to_have_value(ADMIN)
    expect(rows(page)).to_have_count(2)
    page.go_back()
    page.wait_for_url(re.compile(r"\?type=BYOK&limit=4$"))
    expect(rows(page)).to_have_count(4)
    page.go_back()  # to the page as first loaded, before any filter
    page.wait_for_url(re.compile(r"/settings/audit\?limit=4$"))
    expect(page.get_by_label("Type")).to_have_value("")
    expect(rows(page).first).to_contain_text("auth.login")
    page.go_forward()
    page.wait_for_url(re.compile(r"\?type=BYOK&limit=4$"))
    expect(page.get_by_label("Type")).to_have_value("BYOK")
    expect(rows(page)).to_have_count(4)
    newest = actions(page)

    # Older: the fifth BYOK event, the key generated by the admin, on the next page.
    page.get_by_role("link", name="Older").click()
    page.wait_for_url(re.compile(r"type=BYOK&limit=4&before=\d+$"))
    expect(rows(page)).to_have_count(1)
    assert actions(page) == ["BYOK.key_generated"]
    page.get_by_role("link", name="Newer").click()
    page.wait_for_url(re.compile(r"type=BYOK&limit=4&after=\d+$"))
    expect(rows(page)).to_have_count(4)
    assert actions(page) == newest

    # An event's details open in place: pretty JSON, source address and chain hashes.
    event = rows(page).filter(has_text="BYOK.enabled")
    detail = event.locator(".audit-detail")
    expect(detail).to_be_hidden()
    event.locator("summary").click()
    expect(detail).to_be_visible()
    expect(detail).to_contain_text('"origin": "imported"')
    expect(detail).to_contain_text("cli")
    expect(detail.locator("code.hash")).to_have_count(2)
    assert "after=" in page.url  # opening details is not a navigation
    shot(page, "audit-details.png", event)

    # Export CSV with the current filters: the BYOK events, with hashes, and no key.
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert re.fullmatch(rf"audit-{ORG}-\d{{8}}T\d{{6}}Z\.csv", download.value.suggested_filename)
    body = Path(download.value.path()).read_text()
    exported = list(csv.DictReader(io.StringIO(body)))
    assert [r["action"] for r in exported] == [  # newest first, as the page lists them
        "BYOK.enabled",
        "BYOK.key_test",
        "BYOK.key_test",
        "BYOK.key_test",
        "BYOK.key_generated",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["hash"]) for r in exported)
    assert key_text not in body and key_text not in page.content()

    # The export itself is in the log.
    page.get_by_label("Type").select_option("audit.exported")
    page.wait_for_url(re.compile(r"type=audit\.exported"))
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text(ADMIN)
    context.close()
