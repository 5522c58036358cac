"""Narrow and wide screens in a real headless Chromium, on the real ``byok-portal demo``.

At 375 px (a small phone) no page scrolls sideways: wide tables scroll inside their own box
(``.table-wrap``) and long values wrap. At 1280 px the keys table of an organisation with
five keys stays inside its card.
"""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal import crypto
from portal.db import get_session
from portal.models import Organization, User
from portal.rotation.controls import control
from portal.rotation.start import start_rotation
from tests.support.browser import ADMIN, sign_in
from tests.support.rotation import b64, enable_byok, seed

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}
# The page's width against the window's, and what sticks out (outside any scrolling box).
OVERFLOW = """() => {
  const width = window.innerWidth;
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= width + 1) continue;
    let clipped = false;
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (["auto", "scroll", "hidden"].includes(style.overflowX)
          && up.getBoundingClientRect().right <= width + 1) { clipped = true; break; }
    }
    if (!clipped) out.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}`
                           + `${el.className && typeof el.className === "string"
                                ? "." + el.className.split(" ").join(".") : ""}`
                           + ` right=${Math.round(box.right)}`);
  }
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width,
          sticking_out: out.slice(0, 8)};
}"""
# Where a table ends against its card, and which of its cells wrap onto a second line.
TABLE_IN_CARD = """(selector) => {
  const table = document.querySelector(selector);
  const card = table.closest(".card");
  const shown = (table.closest(".table-wrap") || table).getBoundingClientRect();
  const box = card.getBoundingClientRect();
  const wrapped = [];
  const walker = document.createTreeWalker(table.tBodies[0], NodeFilter.SHOW_TEXT);
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    if (!text.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(text);
    const rects = [...range.getClientRects()];
    if (rects.some(r => r.top - rects[0].top > rects[0].height / 2)) {
      wrapped.push(text.textContent.trim());
    }
  }
  return {table: Math.round(table.getBoundingClientRect().right),
          shown: Math.round(shown.right), card: Math.round(box.right),
          inside: shown.left >= box.left - 0.5 && shown.right <= box.right + 0.5,
          table_inside: table.getBoundingClientRect().right <= box.right + 0.5,
          wrapped: wrapped};
}"""


@pytest.fixture
def narrow_env(monkeypatch):
    """The demo (and its worker) on a queue of their own."""
    monkeypatch.setenv("RQ_QUEUE", "byok-narrow-" + uuid.uuid4().hex[:10])


def _five_keys(app) -> uuid.UUID:
    """Give the demo's community organisation five keys, items under each, and a paused run.

    The platform key, K1 and K2 (their runs cancelled, items left under them), K3 (its run
    paused) and the active K4. Returns the paused run's id.
    """
    with app.app_context():
        org_id = get_session().scalar(
            select(Organization.id).where(Organization.slug == "acme-org-community")
        )
    current = enable_byok(app, org_id)
    run_id = None
    for step in range(3):
        seed(app, org_id, conversations=2, messages=4, attachments=1)
        new = crypto.generate_key()
        with app.app_context():
            db = get_session()
            org = db.get(Organization, org_id)
            admin = db.scalar(select(User).where(User.email == ADMIN))
            run = start_rotation(db, org, admin, b64(current), b64(new))
            control(db, run, "cancel" if step < 2 else "pause", admin)
            db.commit()
            run_id = run.id
        current = new
    return run_id


def _overflow(page: Page) -> dict:
    return page.evaluate(OVERFLOW)


def test_no_page_scrolls_sideways_at_375_px(narrow_env, browser, demo_server, app):
    run_id = _five_keys(app)
    base = demo_server.url
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(20_000)
    page = context.new_page()
    found: dict[str, dict] = {}

    def check(name: str) -> None:
        page.wait_for_load_state("networkidle")
        measured = _overflow(page)
        if measured["scrollWidth"] > measured["innerWidth"]:
            found[name] = measured

    page.goto(f"{base}/login")
    check("login")
    page.close()
    page = sign_in(context, demo_server, ADMIN)
    check("home")
    with app.app_context():
        member = get_session().scalar(select(User.id).where(User.email == ADMIN))
    for name, path in [
        ("compliance", "/settings/compliance"),
        ("members", "/settings/members"),
        ("member", f"/settings/members/{member}"),
        ("rotations", "/rotations"),
        ("run", f"/rotations/{run_id}"),
        ("audit log", "/settings/audit"),
        ("error page", "/no-such-page"),
    ]:
        page.goto(f"{base}{path}")
        check(name)
    expect(page.locator("table.keys")).to_have_count(0)  # the error page is what was measured
    page.goto(f"{base}/settings/compliance")
    expect(page.locator("table.keys").first.locator("tbody tr")).to_have_count(5)
    # Audit details: every event opened.
    page.goto(f"{base}/settings/audit")
    page.locator("details").first.locator("summary").click()
    page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
    check("audit details")
    # The cancel confirmation page (a plain form's way to cancel).
    page.goto(f"{base}/rotations/{run_id}")
    with page.expect_navigation():
        # form.submit() is the plain submission htmx does not intercept (as without JS).
        page.evaluate("() => document.querySelector('form[hx-confirm]').submit()")
    expect(page.get_by_role("heading", name="Cancel this run?")).to_be_visible()
    check("cancel confirmation")
    assert not found, found
    context.close()


def test_the_keys_table_stays_inside_its_card_at_1280_px(narrow_env, browser, demo_server, app):
    _five_keys(app)
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(20_000)
    page = sign_in(context, demo_server, ADMIN)
    page.goto(f"{demo_server.url}/settings/compliance")
    expect(page.locator("#byok-status table.keys tbody tr")).to_have_count(5)
    placed = page.evaluate(TABLE_IN_CARD, "#byok-status table.keys")
    # At desktop width the whole table fits its card (no scrolling needed) with one line per
    # row: no fingerprint, state or date broken over two lines.
    assert placed["inside"] and placed["table_inside"], placed
    assert placed["wrapped"] == [], placed
    measured = _overflow(page)
    assert measured["scrollWidth"] <= measured["innerWidth"], measured
    context.close()
