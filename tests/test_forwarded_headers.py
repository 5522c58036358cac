"""The real ``byok-portal serve`` (gunicorn) believes forwarded headers only from trusted proxies.

With ``TRUSTED_PROXY_COUNT=0`` nothing a client writes into ``X-Forwarded-Proto``,
``X-Forwarded-Prefix`` or gunicorn's own ``SCRIPT_NAME`` header changes the scheme (the
cookie's ``Secure``) or the path prefix (the links); with ``1`` the proxy's are honoured.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faults import process_env
from tests.support.nginx import start_process, stop_process, tail, wait_until
from tests.support.processes import free_port


@dataclass
class Served:
    """A running ``byok-portal serve`` on loopback."""

    port: int
    log: Path

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, str, list[str]]:
        """GET ``path`` with raw headers; return status, body and Set-Cookie headers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            return response.status, body, response.headers.get_all("Set-Cookie") or []
        finally:
            conn.close()


def _serve(app_config: dict, tmp_path: Path, count: int) -> Iterator[Served]:
    """Start gunicorn with one worker and the given TRUSTED_PROXY_COUNT; stop it afterwards."""
    port = free_port()
    env = process_env(app_config, TRUSTED_PROXY_COUNT=str(count), XDG_RUNTIME_DIR=str(tmp_path))
    env.pop("FORWARDED_ALLOW_IPS", None)
    log = tmp_path / f"serve-{count}.log"
    proc = start_process(
        [
            sys.executable,
            "-m",
            "portal.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
        ],
        env,
        log,
    )
    served = Served(port, log)
    try:
        wait_until(lambda: served.get("/login", {})[0] == 200, "gunicorn", {"web": (proc, log)})
        yield served
    finally:
        stop_process(proc)


@pytest.fixture
def direct(app, app_config, tmp_path) -> Iterator[Served]:
    """gunicorn with no trusted proxy (the default)."""
    yield from _serve(app_config, tmp_path, 0)


@pytest.fixture
def proxied(app, app_config, tmp_path) -> Iterator[Served]:
    """gunicorn behind one trusted proxy."""
    yield from _serve(app_config, tmp_path, 1)


def _session_cookie(cookies: list[str]) -> str:
    """The session cookie's Set-Cookie header."""
    return next(c for c in cookies if c.startswith("session="))


def _secure(cookie: str) -> bool:
    """Tell whether a Set-Cookie header carries the Secure attribute."""
    return "secure" in {a.strip().lower() for a in cookie.split(";")[1:]}


SCHEME = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on", "X-Forwarded-Protocol": "ssl"}


def test_without_trusted_proxies_a_client_cannot_claim_https(direct):
    for name, value in SCHEME.items():
        status, body, cookies = direct.get("/login", {name: value})
        assert status == 200, (name, tail(direct.log))
        assert not _secure(_session_cookie(cookies)), (name, cookies)


def test_without_trusted_proxies_a_client_cannot_set_the_prefix(direct):
    status, body, _ = direct.get("/login", {"X-Forwarded-Prefix": "/evil"})
    assert status == 200 and "/evil" not in body
    assert 'href="/static/' in body
    # gunicorn's own SCRIPT_NAME header: ignored, so /byok/login is no page of the portal.
    status, body, cookies = direct.get("/byok/login", {"SCRIPT_NAME": "/byok"})
    assert status == 404, (status, body[:300])
    assert "/byok/" not in body and not any("Path=/byok" in c for c in cookies)
    status, body, _ = direct.get("/login", {"SCRIPT_NAME": "/evil"})
    assert status == 200 and "/evil" not in body, (status, tail(direct.log))


def test_behind_one_trusted_proxy_its_scheme_and_prefix_are_honoured(proxied):
    status, body, cookies = proxied.get(
        "/login", {"X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/byok"}
    )
    assert status == 200, tail(proxied.log)
    assert _secure(_session_cookie(cookies))
    assert 'href="/byok/static/' in body and "Path=/byok/" in _session_cookie(cookies)
    status, body, cookies = proxied.get("/byok/login", {"SCRIPT_NAME": "/byok"})
    assert status == 200, (status, tail(proxied.log))
    assert 'href="/byok/static/' in body
    assert not _secure(_session_cookie(cookies))
