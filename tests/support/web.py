"""Signing in as a browser does: the test password, CSRF tokens, the login form; test ids."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from flask.testing import FlaskClient

PASSWORD = "correct horse battery staple"
MASTER_KEY_B64 = "bWFzdGVyLWtleS1mb3ItdGVzdHMtb25seS0zMi1ieXQ="  # 32 bytes, tests only


def csrf_token(client: FlaskClient, path: str = "/login", headers: dict | None = None) -> str:
    """Read the CSRF token of the client's session from a page (fetched with extra headers)."""
    html = client.get(path, headers=headers or {}).get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: FlaskClient, email: str, password: str = PASSWORD):
    """Sign in through the real login form."""
    token = csrf_token(client)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def require_or_skip(condition: bool, why: str) -> None:
    """Skip when a dependency is missing, except in CI where that is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run this test)")
    pytest.skip(why)


def random_id() -> uuid.UUID:
    """A fresh UUID that names nothing."""
    return uuid.uuid4()
