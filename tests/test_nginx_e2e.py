"""End to end behind a real nginx: TLS termination and the portal under ``/byok/``.

Debian's nginx is started on loopback with a throwaway configuration (tests/support/nginx.py,
the same server block as docs/deploy.md) and a self-signed certificate for 127.0.0.1, in front
of ``byok-portal serve`` (gunicorn) and ``byok-portal worker`` with ``TRUSTED_PROXY_COUNT=1``.
Headless Chromium signs in at ``https://127.0.0.1:<port>/byok/``, runs the BYOK wizard and a
rotation; nothing it is shown or asked to fetch leaves the prefix, and the session cookie is
``Secure``. A client's forged ``X-Forwarded-*`` headers are not believed.
Screenshots go to docs/screenshots/nginx-*.png.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal import create_app, crypto
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.models import Organization
from tests.support.browser import generated_key, shot
from tests.support.nginx import NGINX, PREFIX, ProxiedPortal, cli, site_config, start_proxied_portal
from tests.support.processes import CHROMIUM, CHROMIUM_ARGS, free_port
from tests.support.rotation import key_ids, seed
from tests.support.services import clean as _clean
from tests.support.web import MASTER_KEY_B64, require_or_skip

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1200, "height": 900}
ORG_NAME = "Acme Org Community"
ORG_SLUG = "acme-org-community"
ADMIN = f"admin@{ORG_SLUG}.example"

# Every URL a page shows or will fetch: links, forms, buttons' formaction, htmx attributes,
# scripts, stylesheets and images, resolved the way the browser resolves them.
COLLECT_URLS = """() => {
  const found = [];
  const attrs = ["href", "src", "action", "formaction",
                 "hx-get", "hx-post", "hx-put", "hx-patch", "hx-delete"];
  for (const attr of attrs) {
    for (const el of document.querySelectorAll(`[${attr}]`)) {
      const raw = el.getAttribute(attr);
      found.push({tag: el.tagName.toLowerCase(), attr, raw,
                  url: new URL(raw, document.baseURI).href});
    }
  }
  for (const form of document.querySelectorAll("form:not([action])")) {
    found.push({tag: "form", attr: "(no action)", raw: "", url: form.action});
  }
  return found;
}"""


@dataclass
class Stack:
    """The proxied portal, an app on the same services (to read the DB), the admin's password."""

    portal: ProxiedPortal
    app: Flask
    password: str

    def browser_paths(self, since: int) -> list[str]:
        """Paths Chromium asked nginx for, from byte ``since`` of nginx's access log on."""
        log = (self.portal.home / "access.log").read_bytes()[since:].decode(errors="replace")
        return [
            m.group(1)
            for line in log.splitlines()
            if "HeadlessChrome" in line and (m := re.search(r'"[A-Z]+ (\S+) HTTP/', line))
        ]

    def log_size(self) -> int:
        """Where nginx's access log ends now."""
        return (self.portal.home / "access.log").stat().st_size


@pytest.fixture(scope="module")
def proxied(services, tmp_path_factory) -> Iterator[Stack]:
    """nginx + gunicorn + worker on this run's services with one admin, for the whole module."""
    require_or_skip(NGINX.exists(), f"Debian's nginx is not installed ({NGINX})")
    home = tmp_path_factory.mktemp("nginx-e2e")
    config = {
        "BYOK_HOME": str(home / "instance"),
        "DATABASE_URL": services.database_url,
        "REDIS_URL": services.redis_url,
        "SECRET_KEY": "nginx-e2e-" + secrets.token_hex(8),
        "BYOK_MASTER_KEY": MASTER_KEY_B64,
        "BYOK_MASTER_KEY_FILE": str(home / "instance" / "master.key"),
    }
    env = {
        **os.environ,
        **config,
        "TRUSTED_PROXY_COUNT": "1",
        "RQ_QUEUE": "byok-nginx-" + uuid.uuid4().hex[:10],
        "ROTATION_BATCH_ROWS": "40",
        "XDG_RUNTIME_DIR": str(home),  # gunicorn's control socket, not in ~/.gunicorn
        "PYTHONUNBUFFERED": "1",
    }
    app = create_app({**config, "TESTING": True})
    portal = None
    try:
        # The operator's steps: init, an organisation, its admin (password on standard input).
        password = secrets.token_urlsafe(16)
        cli(env, "init")
        cli(env, "create-org", ORG_NAME, "--tier", "org_community", "--slug", ORG_SLUG)
        cli(env, "create-user", ADMIN, "--org", ORG_SLUG, "--role", "admin", "--password-stdin",
            stdin=password + "\n")  # fmt: skip
        portal = start_proxied_portal(home / "nginx", env, free_port(), free_port())
        yield Stack(portal, app, password)
    finally:
        if portal is not None:
            portal.stop()
        _clean(app)


def under_prefix(portal: ProxiedPortal, url: str) -> bool:
    """Tell whether an absolute URL is on the portal's origin and under /byok/."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" == portal.origin and parts.path.startswith(
        PREFIX + "/"
    )


def assert_links_under_prefix(page: Page, portal: ProxiedPortal) -> int:
    """Every URL on the page stays under /byok/ of the same origin; return how many."""
    found = page.evaluate(COLLECT_URLS)
    escaped = [f for f in found if not under_prefix(portal, f["url"])]
    assert not escaped, f"URLs leaving {PREFIX}/ on {page.url}: {escaped}"
    assert found, f"no URLs found on {page.url}"
    return len(found)


def org_id(app) -> uuid.UUID:
    """The id of the organisation the fixture created."""
    with app.app_context():
        return get_session().scalar(select(Organization.id).where(Organization.slug == ORG_SLUG))


@pytest.mark.browser
def test_sign_in_wizard_and_rotation_behind_nginx_stay_under_the_prefix(browser, proxied):
    portal, password, app = proxied.portal, proxied.password, proxied.app
    log_start = proxied.log_size()
    context = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True)
    context.set_default_timeout(20_000)
    requested: list[str] = []
    answered: list[tuple[str, int]] = []
    redirects: list[tuple[str, str]] = []  # (header, value) of every redirect the browser got

    def on_response(response) -> None:
        answered.append((response.url, response.status))
        for header in ("location", "hx-redirect", "hx-location"):
            value = response.headers.get(header)
            if value is not None:
                redirects.append((header, value))

    context.on("request", lambda request: requested.append(request.url))
    context.on("response", on_response)
    page = context.new_page()
    checked = 0

    # Signed out, the portal's root sends the browser to its login page under the prefix.
    page.goto(portal.url)
    page.wait_for_url(f"{portal.url}login?**")
    assert page.url in (f"{portal.url}login?next=%2F", f"{portal.url}login?next=/"), page.url
    checked += assert_links_under_prefix(page, portal)
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert page.url == portal.url
    checked += assert_links_under_prefix(page, portal)

    # The session cookie only travels over https and is out of reach of scripts.
    cookies = {c["name"]: c for c in context.cookies()}
    assert "session" in cookies, cookies
    session_cookie = cookies["session"]
    assert session_cookie["secure"] is True, session_cookie
    assert session_cookie["httpOnly"] is True, session_cookie
    assert session_cookie["sameSite"] == "Lax", session_cookie
    assert all(c["secure"] for c in cookies.values()), cookies

    # Every page the navigation offers keeps its links under the prefix.
    for name, path in (("Audit Log", "settings/audit"), ("Members", "settings/members")):
        page.get_by_role("link", name=name).first.click()
        page.wait_for_url(f"{portal.url}{path}")
        checked += assert_links_under_prefix(page, portal)

    # The BYOK wizard: generate -> paste -> Test Key -> password -> Save & Enable.
    page.get_by_role("link", name="Compliance Policies").first.click()
    page.wait_for_url(f"{portal.url}settings/compliance")
    checked += assert_links_under_prefix(page, portal)
    current = generated_key(page, "enable-h")
    page.locator("#enable-key").fill(current)
    page.get_by_role("button", name="Test Key").click()
    expect(page.locator("#enable-key-feedback")).to_contain_text("Test passed")
    page.locator("#enable-password").fill(password)
    page.get_by_role("button", name="Save & Enable").click()
    expect(page.get_by_test_id("byok-state")).to_have_text("On")
    checked += assert_links_under_prefix(page, portal)
    shot(page, "nginx-compliance.png")

    # Data under the BYOK key, so that the rotation has batches to work through.
    org = org_id(app)
    seed(app, org, conversations=4, messages=60, attachments=2)

    # Rotate: current key + a generated new key -> Test Keys -> password -> Perform Rotation.
    new = generated_key(page, "rotate-h")
    page.locator("#rotate-current_key").fill(current)
    page.locator("#rotate-new_key").fill(new)
    page.get_by_role("button", name="Test Keys").click()
    expect(page.locator("#rotate-new_key-feedback")).to_contain_text("Both keys passed")
    page.locator("#rotate-password").fill(password)
    page.get_by_role("button", name="Perform Rotation").click()
    page.wait_for_url(re.compile(rf"^{re.escape(portal.url)}rotations/[0-9a-f-]{{36}}$"))
    run_url = page.url
    checked += assert_links_under_prefix(page, portal)
    expect(page.get_by_test_id("run-state")).to_have_text("completed", timeout=45_000)
    expect(page.get_by_test_id("overall-percent")).to_have_text("100%")
    checked += assert_links_under_prefix(page, portal)
    shot(page, "nginx-rotation.png")
    remaining = key_ids(app, org)
    assert crypto.key_id(base64.b64decode(new)).hex() in remaining
    assert crypto.key_id(base64.b64decode(current)).hex() not in remaining
    page.get_by_role("link", name="Rotations").first.click()
    page.wait_for_url(f"{portal.url}rotations")
    checked += assert_links_under_prefix(page, portal)

    # Signing out lands on the login page under the prefix.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{portal.url}login")
    checked += assert_links_under_prefix(page, portal)

    # Signed out (no cookies at all), an htmx fragment request gets an HX-Redirect under /byok/.
    context.clear_cookies()
    failed = [(url, status) for url, status in answered if status >= 400]
    assert not failed, f"failed responses: {failed}"
    hx = page.evaluate(
        """async (url) => {
            const r = await fetch(url, {headers: {"HX-Request": "true"}, redirect: "manual"});
            return {status: r.status, redirect: r.headers.get("HX-Redirect")};
        }""",
        f"{run_url}/progress",
    )
    assert hx["status"] == 401, hx
    assert hx["redirect"] and hx["redirect"].startswith(f"{PREFIX}/login"), hx
    assert under_prefix(portal, portal.origin + hx["redirect"]), hx

    # Everything the browser fetched, and every redirect it was given, stayed under /byok/.
    escaped = [url for url in requested if not under_prefix(portal, url)]
    assert not escaped, f"requests outside {PREFIX}/: {escaped}"
    assert any("/progress?" in url for url in requested), "the run page never polled"
    assert redirects, "no redirect was observed"
    for header, value in redirects:
        assert under_prefix(portal, portal.origin + value) or under_prefix(portal, value), (
            header,
            value,
        )
    # nginx saw the same: every request of the browser's pages (and the browser's own favicon
    # probe, which Playwright does not report: see the test below) was under /byok/.
    seen = proxied.browser_paths(log_start)
    unlogged = {urlsplit(u).path for u in requested} - {urlsplit(p).path for p in seen}
    assert not unlogged, f"requests nginx did not log: {unlogged}"
    outside = [path for path in seen if not path.startswith(f"{PREFIX}/")]
    assert set(outside) <= {"/favicon.ico"}, outside
    print(
        f"{len(requested)} requests, {checked} URLs on pages and {len(redirects)} redirects, "
        f"all under {PREFIX}/"
    )
    context.close()


@pytest.mark.browser
def test_the_browser_asks_nginx_for_nothing_outside_the_prefix(browser, proxied):
    import time

    log_start = proxied.log_size()
    # A browser of its own: Chromium asks for an origin's missing icon once per browser.
    fresh = browser.browser_type.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    context = fresh.new_context(viewport=VIEWPORT, ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"{proxied.portal.url}login")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    deadline = time.monotonic() + 3  # the icon is fetched after the page has loaded
    while time.monotonic() < deadline and not any(
        "icon" in path for path in proxied.browser_paths(log_start)
    ):
        time.sleep(0.1)
    fresh.close()
    seen = proxied.browser_paths(log_start)
    assert seen, "nginx logged nothing from the browser"
    outside = [path for path in seen if not path.startswith(f"{PREFIX}/")]
    assert not outside, f"the browser asked nginx for {outside}"


def _session_cookie(set_cookie: list[str]) -> str:
    """The ``name=value`` of the session cookie among Set-Cookie headers."""
    for header in set_cookie:
        if header.startswith("session="):
            return header.split(";", 1)[0]
    raise AssertionError(f"no session cookie in {set_cookie}")


def test_forged_forwarded_headers_are_not_believed_through_nginx(proxied):
    portal, app = proxied.portal, proxied.app
    # The client is 127.0.0.2 to nginx (nginx reaches gunicorn from 127.0.0.1), and claims to
    # be 6.6.6.6, on plain http, on another host and prefix.
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Prefix": "/evil",
    }
    client = "127.0.0.2"
    page = portal.request("GET", f"{PREFIX}/login", forged, source=client)
    assert page.status == 200, page.body
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    set_cookie = page.headers.get_all("Set-Cookie") or []
    cookie_header = next(h for h in set_cookie if h.startswith("session="))
    attributes = {a.strip().lower() for a in cookie_header.split(";")[1:]}
    assert {"secure", "httponly"} <= attributes, cookie_header
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.body).group(1)
    assert f'action="{PREFIX}/login' in page.body or f"{PREFIX}/static/" in page.body

    email = f"nobody-{secrets.token_hex(4)}@example.com"
    failed = portal.request(
        "POST",
        f"{PREFIX}/login",
        {
            **forged,
            "Cookie": _session_cookie(set_cookie),
            "Referer": f"{portal.url}login",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        urlencode({"csrf_token": token, "email": email, "password": "not the password"}),
        source=client,
    )
    assert failed.status == 401, failed.body
    with app.app_context():
        events = [
            ev
            for ev in get_session().scalars(
                select(AuditEvent).where(AuditEvent.action == "auth.login_failed")
            )
            if json.loads(ev.details).get("email") == email
        ]
    assert len(events) == 1, events
    assert events[0].source_ip == client, events[0].source_ip  # nginx's view, not the forgery

    # Signed out: a page redirects and an htmx request gets HX-Redirect, both under /byok/,
    # whatever host and prefix the client claimed.
    plain = portal.request("GET", f"{PREFIX}/settings/compliance", forged, source=client)
    assert plain.status == 302, plain.status
    location = plain.headers["Location"]
    assert location.startswith(f"{PREFIX}/login") or location.startswith(f"{portal.url}login")
    assert "evil" not in location
    fragment = portal.request(
        "GET", f"{PREFIX}/rotations", {**forged, "HX-Request": "true"}, source=client
    )
    assert fragment.status == 401
    assert fragment.headers["HX-Redirect"].startswith(f"{PREFIX}/login")
    bare = portal.request("GET", PREFIX, source=client)  # nginx adds the slash
    assert (bare.status, bare.headers["Location"]) == (301, portal.url)


def test_the_session_cookie_is_scoped_to_the_prefix(proxied):
    page = proxied.portal.request("GET", f"{PREFIX}/login")
    cookie = next(h for h in page.headers.get_all("Set-Cookie") or [] if h.startswith("session="))
    paths = [a.strip()[5:] for a in cookie.split(";") if a.strip().lower().startswith("path=")]
    assert paths in ([f"{PREFIX}/"], [PREFIX]), cookie


def test_deploy_guide_shows_the_nginx_site_this_test_runs():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    site = site_config(
        "443",
        "portal.example.com",
        "/etc/ssl/byok/portal.crt",
        "/etc/ssl/byok/portal.key",
        "127.0.0.1:8000",
    )
    assert site in guide, "docs/deploy.md must show tests/support/nginx.py SITE_TEMPLATE verbatim"
    assert "TRUSTED_PROXY_COUNT=1" in guide


def test_a_regular_install_ships_the_templates_and_migrations(tmp_path):
    """Build the real wheel: an operator's `pip install .` must carry every template,
    migration and static file, under the package."""
    import subprocess
    import sys
    import zipfile

    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("byok_portal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {
        f"portal/templates/{p.relative_to(ROOT / 'templates')}"
        for p in (ROOT / "templates").rglob("*.html")
    }
    needed |= {
        f"portal/migrations/{p.relative_to(ROOT / 'migrations')}"
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    needed |= {f"portal/static/{p.name}" for p in (ROOT / "portal/static").iterdir()}
    assert needed and not needed - names, sorted(needed - names)[:5]
