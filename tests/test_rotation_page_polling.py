"""The run page's polling protocol: facts every second, controls and announcements only on change.

The browser side is tests/test_browser_rotation_focus.py; this checks what the server answers.
"""

from __future__ import annotations

import re

from portal import crypto
from portal.db import get_session
from portal.models import User
from portal.rotation import controls
from portal.rotation.models import RotationRun
from tests.support.rotation import enable_byok, seed
from tests.support.rotation import hx_headers as _hx
from tests.support.rotation import start_via_wizard as _start_via_wizard
from tests.support.web import csrf_token


def _running(app, login_as, orgs):
    """A running (not worked on) rotation of org A, and the admin's client on its page."""
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=3)
    client = login_as("admin_a")
    run_url = _start_via_wizard(client, old, crypto.generate_key()).headers["HX-Redirect"]
    return client, run_url


def _block(html: str, element_id: str) -> str:
    """The opening tag of the element with ``element_id``."""
    match = re.search(rf'<[a-z]+ id="{element_id}"[^>]*>', html)
    assert match, f"no #{element_id}"
    return match.group(0)


def _state(app) -> str:
    with app.app_context():
        return get_session().query(RotationRun).one().state


def test_the_polled_block_holds_no_controls_and_is_not_a_live_region(app, login_as, orgs):
    client, run_url = _running(app, login_as, orgs)
    page = client.get(run_url).get_data(as_text=True)
    tag = _block(page, "run-progress")
    assert "aria-live" not in tag and 'hx-include="#run-known-state"' in tag
    assert 'hx-trigger="every 1s"' in tag
    status = _block(page, "run-status")
    assert 'role="status"' in status
    assert re.search(r'id="run-status"[^>]*>Run state: running<', page)
    assert 'id="run-known-state" name="known_state" value="running"' in page
    # The controls follow the polled block; the block itself has no form.
    polled = client.get(f"{run_url}/progress?known_state=running", headers={"HX-Request": "true"})
    html = polled.get_data(as_text=True)
    assert polled.status_code == 200 and "<form" not in html and "<input" not in html
    assert "hx-swap-oob" not in html and "HX-Trigger" not in polled.headers
    assert 'role="status"' not in html and "aria-live" not in html


def test_a_poll_redraws_controls_and_status_only_when_the_state_changed(app, login_as, orgs):
    client, run_url = _running(app, login_as, orgs)
    with app.app_context():
        db = get_session()
        run = db.query(RotationRun).one()
        admin = db.query(User).filter_by(email=orgs["users"]["admin_a"]).one()
        controls.control(db, run, "pause", admin)  # e.g. from another admin's page
        db.commit()
    polled = client.get(f"{run_url}/progress?known_state=running", headers={"HX-Request": "true"})
    html = polled.get_data(as_text=True)
    assert polled.status_code == 200 and polled.headers["HX-Trigger"] == "run-changed"
    assert '<div id="run-controls" class="controls" hx-swap-oob="true">' in html
    assert 'value="paused"' in html and ">Resume</button>" in html and ">Pause<" not in html
    assert re.search(r'id="run-status"[^>]*hx-swap-oob="innerHTML">Run state: paused<', html)
    # Once the page knows the new state, polls are facts only again.
    again = client.get(f"{run_url}/progress?known_state=paused", headers={"HX-Request": "true"})
    assert "hx-swap-oob" not in again.get_data(as_text=True)
    assert "HX-Trigger" not in again.headers


def test_cancel_is_confirmed_first_with_htmx_and_without_javascript(app, login_as, orgs):
    client, run_url = _running(app, login_as, orgs)
    page = client.get(run_url).get_data(as_text=True)
    form = re.search(r'<form[^>]*action="[^"]*/cancel"[^>]*>', page).group(0)
    assert 'hx-confirm="Cancel this run?' in form and """hx-vals='{"confirmed": "yes"}'""" in form
    # An htmx request without the confirmation is refused and changes nothing.
    refused = client.post(f"{run_url}/cancel", headers=_hx(client, run_url))
    assert refused.status_code == 409 and "Confirm the cancellation" in refused.get_data(
        as_text=True
    )
    assert _state(app) == "running"
    # A plain form gets a confirmation page first, and nothing changes.
    token = csrf_token(client, run_url)
    asked = client.post(f"{run_url}/cancel", data={"csrf_token": token})
    text = asked.get_data(as_text=True)
    assert asked.status_code == 200 and "<h1>Cancel this run?</h1>" in text
    assert 'name="confirmed" value="yes"' in text and ">Keep the run</a>" in text
    assert _state(app) == "running"
    done = client.post(f"{run_url}/cancel", data={"csrf_token": token, "confirmed": "yes"})
    assert done.status_code == 303 and _state(app) == "cancelled"


def test_a_cancelled_run_offers_resume_while_the_service_says_it_can(app, login_as, orgs):
    client, run_url = _running(app, login_as, orgs)
    token = csrf_token(client, run_url)
    client.post(f"{run_url}/cancel", data={"csrf_token": token, "confirmed": "yes"})
    page = client.get(run_url).get_data(as_text=True)
    assert ">Resume</button>" in page and ">Cancel</button>" not in page
    resumed = client.post(f"{run_url}/resume", headers=_hx(client, run_url))
    html = resumed.get_data(as_text=True)
    assert resumed.status_code == 200 and _state(app) == "running"
    assert 'hx-trigger="every 1s"' in html  # the page polls again
    assert re.search(r'id="run-status"[^>]*hx-swap-oob="innerHTML">Run state: running<', html)


def test_a_control_answer_redraws_controls_but_a_throttle_answer_leaves_them(app, login_as, orgs):
    client, run_url = _running(app, login_as, orgs)
    throttled = client.post(
        f"{run_url}/throttle", data={"max_batches_per_second": "3"}, headers=_hx(client, run_url)
    )
    html = throttled.get_data(as_text=True)
    assert throttled.status_code == 200 and "Throttle: 3.0 batches per second." in html
    assert 'id="run-controls"' not in html and 'id="run-status"' not in html
    assert '<div id="run-notice" hx-swap-oob="innerHTML">' in html
    paused = client.post(f"{run_url}/pause", headers=_hx(client, run_url))
    html = paused.get_data(as_text=True)
    assert '<div id="run-controls" class="controls" hx-swap-oob="true">' in html
    assert re.search(r'id="run-status"[^>]*hx-swap-oob="innerHTML">Run state: paused<', html)
    progress = html.partition('<div id="run-notice"')[0]
    assert "<form" not in progress  # the new progress block holds no controls either
