"""The run page in a real headless Chromium: polling never takes focus or a half-typed value.

The progress block is re-rendered every second; the controls live outside it and are redrawn
only when the run's state changes, and only a small status line announces state changes.
Cancel asks first: htmx's confirm dialog with JavaScript, a confirmation page without it.
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
from portal.rotation.models import RotationRun
from portal.rotation.start import start_rotation
from tests.support.browser import ADMIN, VIEWPORT, sign_in
from tests.support.rotation import b64, enable_byok

pytestmark = pytest.mark.browser

# Records every change of the status line's text, and whether the line is still the same node.
WATCH_STATUS = """() => {
  const status = document.getElementById("run-status");
  window.__statusNode = status;
  window.__announced = [];
  new MutationObserver(() => window.__announced.push(status.textContent.trim()))
    .observe(status, {childList: true, characterData: true, subtree: true});
}"""
LIVE_ANCESTOR = """() => {
  for (let el = document.getElementById("run-progress"); el; el = el.parentElement) {
    if (el.hasAttribute("aria-live")) return el.id || el.tagName;
  }
  return null;
}"""


@pytest.fixture
def focus_env(monkeypatch):
    """The demo (and its worker) on a queue of their own."""
    monkeypatch.setenv("RQ_QUEUE", "byok-focus-" + uuid.uuid4().hex[:10])


def _paused_run(app, current: bytes) -> tuple[uuid.UUID, bytes]:
    """Start a rotation of the demo's community organisation and pause it at once.

    A paused run's page keeps polling every second, and nothing moves under it.
    """
    new = crypto.generate_key()
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == "acme-org-community"))
        admin = db.scalar(select(User).where(User.email == ADMIN))
        run = start_rotation(db, org, admin, b64(current), b64(new))
        control(db, run, "pause", admin)
        db.commit()
        return run.id, new


def _state(app, run_id: uuid.UUID) -> str:
    with app.app_context():
        return get_session().get(RotationRun, run_id).state


def _org_id(app) -> uuid.UUID:
    with app.app_context():
        return get_session().scalar(
            select(Organization.id).where(Organization.slug == "acme-org-community")
        )


def test_polling_keeps_focus_and_typed_throttle_and_announces_only_state_changes(
    focus_env, browser, demo_server, app
):
    run_id, _new = _paused_run(app, enable_byok(app, _org_id(app)))
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    page: Page = sign_in(context, demo_server, ADMIN)
    polls: list[int] = []
    page.on("response", lambda r: polls.append(r.status) if "/progress" in r.url else None)
    page.goto(f"{demo_server.url}/rotations/{run_id}")
    expect(page.get_by_test_id("run-state")).to_have_text("paused")
    expect(page.locator("#run-progress")).to_have_attribute("hx-trigger", "every 1s")

    # Nothing polled is a live region: neither the block, an ancestor, nor anything inside it.
    assert page.evaluate(LIVE_ANCESTOR) is None
    assert page.locator("#run-progress [aria-live], #run-progress [role]").count() == 0
    status = page.locator("#run-status")
    expect(status).to_have_attribute("role", "status")
    expect(status).to_contain_text("paused")
    page.evaluate(WATCH_STATUS)

    # Focus the throttle input and type part of a value; several polls later both are kept.
    throttle = page.get_by_label("Max batches/s")
    throttle.click()
    throttle.press_sequentially("12")
    before = len(polls)
    page.wait_for_timeout(3_200)
    assert len(polls) - before >= 2, f"only {len(polls) - before} polls in 3.2 s"
    assert all(code == 200 for code in polls), polls
    assert throttle.input_value() == "12"
    assert page.evaluate("document.activeElement && document.activeElement.id") == (
        f"throttle-{run_id}"
    )
    assert page.evaluate("window.__announced") == []  # polls announced nothing

    # Cancel asks first; dismissing changes nothing.
    dialogs: list[str] = []

    def dismiss(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.wait_for_timeout(1_500)
    assert dialogs and "Cancel this run?" in dialogs[0], dialogs
    assert _state(app, run_id) == "paused"
    assert page.evaluate("window.__announced") == []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_test_id("run-state")).to_have_text("cancelled")
    expect(status).to_contain_text("cancelled")
    assert len(dialogs) == 2
    assert _state(app, run_id) == "cancelled"
    # The same status line changed its text (announced once per change, not per poll).
    assert page.evaluate("document.getElementById('run-status') === window.__statusNode")
    announced = page.evaluate("window.__announced")
    assert announced and all("cancelled" in text for text in announced), announced
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.get_by_label("Max batches/s")).to_have_count(0)
    # The service says this cancelled run can be resumed: the redrawn controls offer it.
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.locator("#run-notice")).to_contain_text("Cancelled.")
    context.close()


def test_cancel_without_javascript_asks_on_a_page_of_its_own(focus_env, browser, demo_server, app):
    run_id, _new = _paused_run(app, enable_byok(app, _org_id(app)))
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    context.set_default_timeout(20_000)
    page = sign_in(context, demo_server, ADMIN)  # the plain login form
    page.goto(f"{demo_server.url}/rotations/{run_id}")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_role("heading", name="Cancel this run?")).to_be_visible()
    assert _state(app, run_id) == "paused"  # asking changed nothing
    # "Keep it" goes back to the run, still paused.
    page.get_by_role("link", name="Keep the run").click()
    expect(page.get_by_test_id("run-state")).to_have_text("paused")
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.get_by_role("button", name="Yes, cancel the run").click()
    expect(page.get_by_test_id("run-state")).to_have_text("cancelled")
    expect(page.get_by_role("status").filter(has_text="Cancelled.")).to_have_count(1)
    assert _state(app, run_id) == "cancelled"
    context.close()
