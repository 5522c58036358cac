"""Rotation from the wizard, its live progress fragment, controls and the role matrix."""

from __future__ import annotations

import re

import pytest

from portal import crypto
from portal.db import get_session
from portal.rotation.models import RotationRun
from tests.support.rotation import b64, enable_byok, run_worker, seed
from tests.support.rotation import hx_headers as _hx
from tests.support.rotation import start_via_wizard as _start_via_wizard
from tests.support.web import PASSWORD, csrf_token


def test_rotation_from_the_wizard_runs_to_completion_and_polling_stops(app, login_as, orgs):
    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=5)
    client = login_as("admin_a")
    response = _start_via_wizard(client, old, crypto.generate_key())
    assert response.status_code == 200 and response.headers["HX-Redirect"].startswith("/rotations/")
    run_url = response.headers["HX-Redirect"]
    page = client.get(run_url)
    assert page.status_code == 200 and 'hx-trigger="every 1s"' in page.get_data(as_text=True)
    running = client.get(f"{run_url}/progress", headers={"HX-Request": "true"})
    assert running.status_code == 200
    run_worker(app)
    done = client.get(f"{run_url}/progress", headers={"HX-Request": "true"})
    assert done.status_code == 286
    html = done.get_data(as_text=True)
    assert 'data-testid="run-state">completed<' in html and ">100%<" in html
    status = client.get(f"{run_url}/status.json").get_json()
    assert status["state"] == "completed"
    assert status["messages"] == {"total": 10, "done": 10, "failed": 0}
    assert status["metadata"]["done"] == 2 and status["attachments"]["done"] == 2


def test_test_keys_refuses_a_wrong_current_key_with_a_field_message(app, login_as, orgs):
    enable_byok(app, orgs["a"]["id"])
    client = login_as("admin_a")
    response = client.post(
        "/settings/compliance/rotate/test",
        data={"current_key": b64(crypto.generate_key()), "new_key": b64(crypto.generate_key())},
        headers=_hx(client),
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="rotate-current_key-feedback"' in html and "not the active key" in html


def test_perform_rotation_without_test_keys_is_refused(app, login_as, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    client = login_as("admin_a")
    response = client.post(
        "/settings/compliance/rotate/start",
        data={"current_key": b64(old), "new_key": b64(crypto.generate_key()), "password": PASSWORD},
        headers=_hx(client),
    )
    assert response.status_code == 422
    with app.app_context():
        assert get_session().query(RotationRun).count() == 0


def test_a_second_rotation_is_refused_while_one_runs(app, login_as, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=2)
    client = login_as("admin_a")
    new = crypto.generate_key()
    assert _start_via_wizard(client, old, new).status_code == 200
    third = crypto.generate_key()
    response = client.post(
        "/settings/compliance/rotate/test",
        data={"current_key": b64(new), "new_key": b64(third)},
        headers=_hx(client),
    )
    # The page no longer offers the form, and the service refuses a direct post.
    fp = re.search(r'name="tested_fingerprint" value="([^"]+)"', response.get_data(as_text=True))
    refused = client.post(
        "/settings/compliance/rotate/start",
        data={
            "current_key": b64(new),
            "new_key": b64(third),
            "tested_fingerprint": fp.group(1) if fp else "",
            "password": PASSWORD,
        },
        headers=_hx(client),
    )
    assert refused.status_code == 422
    assert "already in progress" in refused.get_data(as_text=True)
    with app.app_context():
        assert get_session().query(RotationRun).count() == 1


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_controls_change_the_run_state(app, login_as, orgs, action):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=3)
    client = login_as("admin_a")
    run_url = _start_via_wizard(client, old, crypto.generate_key()).headers["HX-Redirect"]
    # A cancel carries the confirmation htmx sends after its dialog.
    response = client.post(
        f"{run_url}/{action}", data={"confirmed": "yes"}, headers=_hx(client, run_url)
    )
    assert response.status_code == 200
    with app.app_context():
        run = get_session().query(RotationRun).one()
        assert run.state == {"pause": "paused", "cancel": "cancelled"}[action]
    run_worker(app)  # queued jobs see the state and stop without moving anything
    with app.app_context():
        run = get_session().query(RotationRun).one()
        assert run.state == {"pause": "paused", "cancel": "cancelled"}[action]
    if action == "pause":
        assert client.post(f"{run_url}/resume", headers=_hx(client, run_url)).status_code == 200
        run_worker(app)
        with app.app_context():
            assert get_session().query(RotationRun).one().state == "completed"


def test_the_polled_progress_fragment_is_light_and_history_is_its_own_fragment(app, login_as, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=3)
    client = login_as("admin_a")
    run_url = _start_via_wizard(client, old, crypto.generate_key()).headers["HX-Redirect"]
    page = client.get(run_url).get_data(as_text=True)
    assert 'id="run-history"' in page and 'hx-trigger="every 5s, run-changed from:body"' in page
    assert "<h2>History</h2>" in page
    polled = client.get(f"{run_url}/progress", headers={"HX-Request": "true"})
    assert polled.status_code == 200 and "HX-Trigger" not in polled.headers
    assert "History" not in polled.get_data(as_text=True)  # the history is not re-read per poll
    history = client.get(f"{run_url}/history", headers={"HX-Request": "true"})
    assert history.status_code == 200 and "<h2>History</h2>" in history.get_data(as_text=True)
    run_worker(app)
    last = client.get(f"{run_url}/progress", headers={"HX-Request": "true"})
    # The last poll stops polling and tells the page to refresh the history at once.
    assert last.status_code == 286 and last.headers["HX-Trigger"] == "run-changed"
    ended = client.get(f"{run_url}/history", headers={"HX-Request": "true"})
    assert ended.status_code == 286 and "Completed and verified" in ended.get_data(as_text=True)
    page = client.get(run_url).get_data(as_text=True)
    assert 'hx-trigger="none"' in page and 'hx-trigger="run-changed from:body"' in page


def test_a_control_answers_both_blocks_anew_so_polling_restarts(app, login_as, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=3)
    client = login_as("admin_a")
    run_url = _start_via_wizard(client, old, crypto.generate_key()).headers["HX-Redirect"]
    paused = client.post(f"{run_url}/pause", headers=_hx(client, run_url))
    assert paused.headers["HX-Retarget"] == "#run-progress"
    assert paused.headers["HX-Reswap"] == "outerHTML"
    html = paused.get_data(as_text=True)
    progress, _, history = html.partition('<div id="run-history" hx-swap-oob="true"')
    assert progress.lstrip().startswith('<div id="run-progress"') and "Paused." in progress
    assert 'hx-trigger="every 1s"' in progress  # a paused run's page keeps polling
    assert history and "paused" in history.lower() and "<h2>History</h2>" in history


def test_throttle_is_validated_and_stored(app, login_as, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    client = login_as("admin_a")
    run_url = _start_via_wizard(client, old, crypto.generate_key()).headers["HX-Redirect"]
    bad = client.post(
        f"{run_url}/throttle", data={"max_batches_per_second": "fast"}, headers=_hx(client, run_url)
    )
    assert bad.status_code == 409
    ok = client.post(
        f"{run_url}/throttle", data={"max_batches_per_second": "2.5"}, headers=_hx(client, run_url)
    )
    assert ok.status_code == 200
    with app.app_context():
        assert get_session().query(RotationRun).one().max_batches_per_second == 2.5


@pytest.mark.parametrize(
    ("who", "list_status", "run_status", "control_status"),
    [
        ("admin_a", 200, 200, 303),
        ("admin_b", 200, 404, 404),
        ("support", 200, 200, 403),
        ("auditor_a", 403, 403, 403),
        ("member_a", 403, 403, 403),
    ],
)
def test_role_and_tenant_matrix_on_rotation_routes(
    app, client, orgs, login_as, who, list_status, run_status, control_status
):
    old = enable_byok(app, orgs["a"]["id"])
    admin = app.test_client()
    from tests.support.web import login

    login(admin, orgs["users"]["admin_a"])
    run_url = _start_via_wizard(admin, old, crypto.generate_key()).headers["HX-Redirect"]
    viewer = login_as(who)
    assert viewer.get("/rotations").status_code == list_status
    for suffix in ("", "/progress", "/history", "/status.json", "/failures.csv"):
        assert viewer.get(run_url + suffix).status_code == run_status, suffix
    token = csrf_token(viewer, "/")
    response = viewer.post(f"{run_url}/pause", headers={"X-CSRFToken": token})
    assert response.status_code == control_status


def test_support_sees_every_organisations_runs_but_no_content(app, login_as, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=2)
    admin = app.test_client()
    from tests.support.web import login

    login(admin, orgs["users"]["admin_a"])
    run_url = _start_via_wizard(admin, old, crypto.generate_key()).headers["HX-Redirect"]
    run_worker(app)
    support = login_as("support")
    listing = support.get("/rotations").get_data(as_text=True)
    assert "Org A" in listing and run_url in listing
    page = support.get(run_url).get_data(as_text=True)
    assert "message 0 of 0" not in page and "conversation 0" not in page
    assert "Pause" not in page and "Cancel" not in page
