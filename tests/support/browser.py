"""Driving the demo in Chromium as a person does: sign in, open a page, enable a key."""

from __future__ import annotations

import base64
from pathlib import Path

from playwright.sync_api import Page, expect

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

VIEWPORT = {"width": 1200, "height": 900}
ADMIN = "admin@acme-org-community.example"
ACME = ADMIN  # the admin of the demo's Organization Community


def sign_in(context, demo, email: str) -> Page:
    """Sign in through the login form."""
    assert email in demo.logins, "".join(demo.output)
    page = context.new_page()
    page.goto(f"{demo.url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(demo.logins[email])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


def open_compliance(context, demo, email: str) -> Page:
    """Sign in through the login form and open Compliance Policies from the navigation."""
    page = sign_in(context, demo, email)
    page.get_by_role("link", name="Compliance Policies").first.click()
    page.wait_for_url("**/settings/compliance")
    return page


def enable_by_mouse(page: Page, text: str, password: str | None = None) -> str:
    """Paste a key, Test Key, Save & Enable; return the fingerprint shown as active."""
    page.locator("#enable-key").fill(text)
    page.get_by_role("button", name="Test Key").click()
    tested = page.get_by_test_id("tested-fingerprint")
    expect(tested).to_be_visible()
    if password:
        page.locator("#enable-password").fill(password)
    page.get_by_role("button", name="Save & Enable").click()
    expect(page.get_by_test_id("byok-state")).to_have_text("On")
    return page.get_by_test_id("active-fingerprint").inner_text()


def shot(page: Page, name: str, focus: str | None = None) -> None:
    """Save a screenshot into docs/screenshots/, scrolled so that ``focus`` (a selector) is in
    view, or to the top of the page."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if focus:
        page.locator(focus).first.evaluate("e => e.scrollIntoView({block: 'center'})")
    else:
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / name))


def generated_key(page: Page, section: str) -> str:
    """Press Generate New Key in a wizard section and read the key it shows once."""
    area = page.locator(f"section[aria-labelledby={section}]")
    area.get_by_role("button", name="Generate New Key").click()
    shown = area.get_by_test_id("generated-key")
    expect(shown).to_be_visible()
    text = shown.inner_text().strip()
    assert len(base64.b64decode(text, validate=True)) == 32
    return text
