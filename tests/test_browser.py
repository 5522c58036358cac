"""The demo in a real headless Chromium."""

from __future__ import annotations

import pytest

from tests.support.processes import start_demo, stop_demo

pytestmark = pytest.mark.browser


def sign_in(page, url: str, email: str, password: str) -> None:
    """Sign in through the login form as a person would."""
    page.goto(f"{url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_demo_admin_signs_in_and_reaches_compliance_policies(browser, demo_server):
    email = "admin@acme-org-community.example"
    assert email in demo_server.logins, "".join(demo_server.output)
    page = browser.new_page()
    sign_in(page, demo_server.url, email, demo_server.logins[email])
    page.get_by_role("link", name="Compliance Policies").first.click()
    page.wait_for_url("**/settings/compliance")
    assert page.get_by_role("heading", name="Compliance Policies").is_visible()
    assert "Organization Community" in page.content()
    page.close()


def _alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_embedded_demo_serves_and_stops_cleanly_with_nothing_left(tmp_path):
    import os
    import urllib.request

    home = tmp_path / "home"
    env = {"BYOK_HOME": str(home), "DATABASE_URL": "", "REDIS_URL": "", "BYOK_MASTER_KEY": ""}
    demo = start_demo(env)
    try:
        with urllib.request.urlopen(f"{demo.url}/healthz", timeout=10) as response:
            assert response.status == 200
        pid = demo.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = handle.read()
        child_pids = [int(pid) for pid in children.split()]
        redis_pid = int((home / "redis.pid").read_text())
        assert child_pids and _alive(redis_pid)
    finally:
        status = stop_demo(demo)
    assert status == 0, "".join(demo.output)
    assert "stopped" in "".join(demo.output)
    assert not any(_alive(pid) for pid in child_pids)
    assert not _alive(redis_pid)
    again = start_demo(env)  # a second run reuses the instance and its logins
    try:
        assert again.logins == demo.logins
    finally:
        assert stop_demo(again) == 0
    assert os.stat(home / "demo-logins.json").st_mode & 0o077 == 0


def test_wrong_password_shows_generic_message_in_browser(browser, demo_server):
    page = browser.new_page()
    sign_in(page, demo_server.url, "admin@acme-org-community.example", "definitely wrong")
    assert page.get_by_role("alert").inner_text() == "Email or password is not correct."
    page.close()
