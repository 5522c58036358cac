"""Key rotation in a real headless Chromium on the real ``byok-portal demo`` (with its worker).

The admin enables BYOK and rotates from the wizard, watches the live progress reach 100% and
the polling stop; a support user then watches the same run from the Rotations page.
Screenshots go to docs/screenshots/rotation-*.png.
"""

from __future__ import annotations

import base64
import time

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from portal import crypto
from portal.db import get_session
from portal.models import Organization
from tests.support.browser import ADMIN, VIEWPORT, generated_key, shot, sign_in
from tests.support.faults import bulk_seed
from tests.support.rotation import key_ids

pytestmark = pytest.mark.browser

SUPPORT = "support@platform.example"
EXTRA_MESSAGES = 30_000  # enough for the run to last a few seconds on the demo's one worker


@pytest.fixture
def demo_env(monkeypatch):
    """Settings the demo (and the worker it starts) inherit: small batches, a queue of its own."""
    import uuid

    monkeypatch.setenv("ROTATION_BATCH_ROWS", "100")
    monkeypatch.setenv("ROTATION_SLICE_SECONDS", "2")
    monkeypatch.setenv("RQ_QUEUE", "byok-browser-" + uuid.uuid4().hex[:10])


def test_admin_rotates_from_the_wizard_watches_it_finish_and_support_watches_it_too(
    demo_env, browser, demo_server, app
):
    password = demo_server.logins[ADMIN]
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    page = sign_in(context, demo_server, ADMIN)
    page.get_by_role("link", name="Compliance Policies").first.click()
    page.wait_for_url("**/settings/compliance")

    # Enable BYOK: generate -> paste -> Test Key -> password -> Save & Enable.
    current = generated_key(page, "enable-h")
    page.locator("#enable-key").fill(current)
    page.get_by_role("button", name="Test Key").click()
    expect(page.locator("#enable-key-feedback")).to_contain_text("Test passed")
    page.locator("#enable-password").fill(password)
    page.get_by_role("button", name="Save & Enable").click()
    expect(page.get_by_test_id("byok-state")).to_have_text("On")

    # More data under the BYOK key, so that the run lasts long enough to be watched.
    with app.app_context():
        org_id = get_session().scalar(
            select(Organization.id).where(Organization.slug == "acme-org-community")
        )
    bulk_seed(app, org_id, EXTRA_MESSAGES, 20, 5)

    # Rotate: current key + a generated new key -> Test Keys -> password -> Perform Rotation.
    new = generated_key(page, "rotate-h")
    page.locator("#rotate-current_key").fill(current)
    page.locator("#rotate-new_key").fill(new)
    page.get_by_role("button", name="Test Keys").click()
    expect(page.locator("#rotate-new_key-feedback")).to_contain_text("Both keys passed")
    page.locator("#rotate-password").fill(password)
    polls: list[str] = []
    statuses: list[int] = []
    # A poll is /progress?known_state=<the state the page shows>.
    page.on("request", lambda r: polls.append(r.url) if "/progress?" in r.url else None)
    page.on("response", lambda r: statuses.append(r.status) if "/progress?" in r.url else None)
    page.get_by_role("button", name="Perform Rotation").click()
    page.wait_for_url("**/rotations/*")
    run_url = page.url
    state = page.get_by_test_id("run-state")
    caught = None
    deadline = time.monotonic() + 30
    while caught is None and state.inner_text() == "running" and time.monotonic() < deadline:
        percent = int(page.get_by_test_id("overall-percent").inner_text().rstrip("%"))
        if 5 <= percent <= 90:  # caught mid-run: the bars moved without a reload
            caught = percent
            shot(page, "rotation-running.png")
        page.wait_for_timeout(100)
    print(f"caught the run at {caught}%" if caught else "the run was not caught mid-run")
    expect(state).to_have_text("completed", timeout=90_000)
    expect(page.get_by_test_id("overall-percent")).to_have_text("100%")
    for kind in ("overall", "messages", "attachments", "metadata"):
        assert page.get_by_test_id(f"{kind}-progress").get_attribute("value") == "100", kind
    assert polls, "the page never polled for progress"
    assert statuses and statuses[-1] == 286, statuses[-5:]
    polled = len(polls)
    time.sleep(3)
    assert len(polls) == polled, f"still polling after completion: {polls[polled:]}"
    expect(page.locator(".history")).to_contain_text("Completed and verified")
    shot(page, "rotation-completed.png")
    # Nothing is left under any other key: the rotation also moved the platform-key items
    # written before BYOK was enabled (issue 11, point 1).
    assert key_ids(app, org_id) == {crypto.key_id(base64.b64decode(new)).hex()}
    context.close()

    # Support staff: the Rotations page lists the run; its page shows 100% and no controls.
    support_ctx = browser.new_context(viewport=VIEWPORT)
    support_ctx.set_default_timeout(20_000)
    page = sign_in(support_ctx, demo_server, SUPPORT)
    page.get_by_role("link", name="Rotations").first.click()
    page.wait_for_url("**/rotations")
    row = page.get_by_role("row").filter(has_text="Acme Org Community")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("100%")
    row.get_by_role("link", name="completed").click()
    page.wait_for_url(run_url)
    expect(page.get_by_test_id("run-state")).to_have_text("completed")
    expect(page.get_by_test_id("overall-percent")).to_have_text("100%")
    for label in ("Pause", "Resume", "Cancel", "Set throttle", "Retry failed items"):
        expect(page.get_by_role("button", name=label)).to_have_count(0)
    html = page.content()
    assert current not in html and new not in html  # no key material
    assert "Quarterly plan" not in html  # no content (a demo conversation title)
    shot(page, "rotation-support.png")
    support_ctx.close()


def test_support_staff_watching_a_run_do_not_see_which_admin_started_it(
    demo_env, browser, demo_server, app
):
    from portal.models import User
    from portal.rotation.queue import enqueue_ranges
    from portal.rotation.start import start_rotation
    from tests.support.rotation import b64, enable_byok

    with app.app_context():
        db = get_session()
        org_id = db.scalar(select(Organization.id).where(Organization.slug == "acme-org-community"))
    old = enable_byok(app, org_id)
    with app.app_context():
        db = get_session()
        admin = db.scalar(select(User).where(User.email == ADMIN))
        org = db.get(Organization, org_id)
        run = start_rotation(db, org, admin, b64(old), b64(crypto.generate_key()))
        db.commit()
        run_id = run.id
    enqueue_ranges(app, run_id)  # the demo's worker runs it
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    page = sign_in(context, demo_server, SUPPORT)
    page.goto(f"{demo_server.url}/rotations/{run_id}")
    expect(page.get_by_test_id("run-state")).to_have_text("completed", timeout=60_000)
    expect(page.get_by_text("by an admin")).to_be_visible()
    assert ADMIN not in page.content()
    context.close()
