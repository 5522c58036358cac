"""Driving the demo in Chromium as a person does: sign in, open a page, enable a key."""

from __future__ import annotations

from playwright.sync_api import Page, expect

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
    assert email in demo.logins, "".join(demo.output)
    page = context.new_page()
    page.goto(f"{demo.url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(demo.logins[email])
    page.get_by_role("button", name="Sign in").click()
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
