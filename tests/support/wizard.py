"""Driving the BYOK wizard as htmx does (or as a plain form), and reading what it stored."""

from __future__ import annotations

import base64
import secrets
import time
import uuid

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from portal import crypto
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.keys.models import OrgKey
from portal.models import User
from tests.support.html import by_testid, parse_html
from tests.support.web import PASSWORD, csrf_token, login

PAGE = "/settings/compliance"
FRAGMENT = f"{PAGE}/byok"
POST_ROUTES = ("generate", "test", "enable", "disable", "lost", "restore", "revoke")
API = "/api/v1"
REAUTH_MESSAGE = "Enter your password to confirm this key operation."
WRONG_PASSWORD = "That password is not correct."
REQUIRED_MESSAGE = "BYOK is required for Dedicated and On-Premise deployments"

_URLSAFE = base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()
INVALID_KEYS = [
    # (id, pasted text, what the message must say)
    ("not-base64", "Zm9v*YmFy!" * 4 + "abcd", ["not valid base64", "44 characters"]),
    ("url-safe", _URLSAFE, ["not valid base64", "URL-safe"]),
    ("bad-padding", base64.b64encode(b"k" * 32).decode().rstrip("="), ["not valid base64"]),
    (
        "wrong-length",
        base64.b64encode(b"\x01" * 24).decode(),
        ["24 bytes were decoded", "exactly 32 bytes"],
    ),
    ("one-byte", base64.b64encode(b"\x07").decode(), ["1 byte was decoded", "32 bytes"]),
    (
        "aes-128",
        base64.b64encode(b"\x02" * 16).decode(),
        ["AES-128", "16 bytes were decoded", "32 bytes"],
    ),
    ("hex", ("9f" * 32), ["hex-encoded key of 32 bytes", "xxd -r -p key.hex | base64"]),
    (
        "pem",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFq8Zq9vYmFyYmF6cXV1eHF1dXg=\n"
        "-----END PRIVATE KEY-----\n",
        ["PEM block", "32-byte key"],
    ),
    (
        "json",
        '{"kty":"oct","k":"Wq8Zq9vYmFyYmF6cXV1eHF1dXgxMjM0NTY3ODkwYWI"}',
        ["looks like JSON", '"k" field'],
    ),
    ("empty", "", ["No key was entered."]),
    ("blank", "  \r\n\t ", ["No key was entered."]),
]


def byok_forms(html: str) -> list[str]:
    """Return the actions of the forms that post to the BYOK routes."""
    return [
        n.attrs.get("action", "")
        for n in parse_html(html).find_all()
        if n.tag == "form" and n.attrs.get("action", "").startswith(f"{PAGE}/byok")
    ]


def key_row(html: str, fp: str) -> list[str]:
    """Return the cells of the keys table row of a fingerprint."""
    row = parse_html(html).find(data_fingerprint=fp)
    assert row is not None, f"no key row {fp}"
    return [c.text() for c in row.walk() if c.tag == "td"]


def new_key() -> tuple[bytes, str, str]:
    """Return a fresh key, its base64 text and its fingerprint."""
    key = secrets.token_bytes(32)
    return key, base64.b64encode(key).decode(), fp_of(key)


def fp_of(key: bytes) -> str:
    """Return the fingerprint of a key as the portal shows it."""
    return crypto.fingerprint(crypto.key_id(key))


def session_cookie(app: Flask, client: FlaskClient) -> dict:
    """Return the contents of the client's (signed, not encrypted) session cookie."""
    cookie = client.get_cookie(app.config.get("SESSION_COOKIE_NAME", "session"))
    assert cookie is not None
    return app.session_interface.get_signing_serializer(app).loads(cookie.value)


def add_org(app: Flask, password_hash: str, tier: str, name: str | None = None) -> dict:
    """Create an organisation of a tier with an admin and an auditor; return slug, id, emails."""
    from portal.orgs import create_org

    name = name or f"T {tier} {secrets.token_hex(3)}"
    with app.app_context():
        db = get_session()
        org = create_org(db, name, tier)
        users = {}
        for role in ("admin", "auditor", "member"):
            email = f"{role}@{org.slug}.example"
            db.add(User(email=email, password_hash=password_hash, role=role, company_id=org.id))
            users[role] = email
        db.commit()
        return {"id": org.id, "slug": org.slug, "tier": tier, **users}


def key_id_of(app: Flask, model, row_id: str) -> str:
    """Return the key_id column of a stored row."""
    with app.app_context():
        return get_session().scalar(select(model.key_id).where(model.id == uuid.UUID(row_id)))


def org_keys(app: Flask, company_id: uuid.UUID) -> list[OrgKey]:
    """Return an organisation's key rows, oldest first (detached copies)."""
    with app.app_context():
        db = get_session()
        rows = list(
            db.scalars(
                select(OrgKey).where(OrgKey.company_id == company_id).order_by(OrgKey.created_at)
            )
        )
        db.expunge_all()
        return rows


def key_by_fp(app: Flask, company_id: uuid.UUID, fp: str) -> OrgKey:
    """Return the organisation's key row with a fingerprint."""
    found = [k for k in org_keys(app, company_id) if k.fingerprint == fp]
    assert found, f"no key {fp}"
    return found[0]


def platform_key_ids(app: Flask, company_id: uuid.UUID) -> set[str]:
    """Return the key ids of the organisation's platform-managed keys."""
    return {k.key_id for k in org_keys(app, company_id) if k.origin == "platform"}


def events(
    app: Flask, action: str, company_id: uuid.UUID | None = None, outcome: str | None = None
) -> list[AuditEvent]:
    """Return the audit events of an action (of one organisation, one outcome), oldest first.

    A refused operation is recorded under the same action with outcome ``failure``.
    """
    with app.app_context():
        db = get_session()
        query = select(AuditEvent).where(AuditEvent.action == action)
        if company_id is not None:
            query = query.where(AuditEvent.company_id == company_id)
        if outcome is not None:
            query = query.where(AuditEvent.outcome == outcome)
        rows = list(db.scalars(query.order_by(AuditEvent.id)))
        db.expunge_all()
        return rows


class Wizard:
    """A signed-in browser session on the Compliance Policies page."""

    def __init__(self, app: Flask, client: FlaskClient, token_path: str = PAGE) -> None:
        """Remember the client and read its CSRF token from a page it may open."""
        self.app = app
        self.client = client
        self.token = csrf_token(client, token_path)

    def post(self, action: str, data: dict | None = None, htmx: bool = True, csrf: bool = True):
        """POST a wizard step as htmx (CSRF header) or as a plain form (CSRF field)."""
        data = dict(data or {})
        headers = {}
        if htmx:
            headers["HX-Request"] = "true"
            if csrf:
                headers["X-CSRFToken"] = self.token
        elif csrf:
            data["csrf_token"] = self.token
        return self.client.post(f"{PAGE}/byok/{action}", data=data, headers=headers)

    def page(self) -> str:
        """GET the Compliance Policies page."""
        response = self.client.get(PAGE)
        assert response.status_code == 200
        return response.get_data(as_text=True)

    def generate(self) -> tuple[bytes, str]:
        """Press Generate New Key; return the key shown and its fingerprint."""
        response = self.post("generate")
        assert response.status_code == 200, response.get_data(as_text=True)
        html = response.get_data(as_text=True)
        key = base64.b64decode(by_testid(html, "generated-key"), validate=True)
        return key, by_testid(html, "generated-fingerprint")

    def test_key(self, text: str, htmx: bool = True):
        """Press Test Key with a pasted key."""
        return self.post("test", {"key": text}, htmx=htmx)

    def enable(self, text: str, tested: str | None = None, password: str | None = PASSWORD):
        """Press Save & Enable; ``tested`` defaults to the fingerprint Test Key showed."""
        if tested is None:
            tested = by_testid(self.test_key(text).get_data(as_text=True), "tested-fingerprint")
        data = {"key": text, "tested_fingerprint": tested}
        if password is not None:
            data["password"] = password
        return self.post("enable", data)

    def enable_ok(self, text: str) -> str:
        """Test and enable a key; return its fingerprint."""
        response = self.enable(text)
        assert response.status_code == 200, response.get_data(as_text=True)
        return by_testid(response.get_data(as_text=True), "active-fingerprint")

    def confirm(self, action: str, slug: str, password: str | None = PASSWORD, **extra):
        """Submit a slug-confirmed step (disable, lost, revoke)."""
        data = {"confirm_slug": slug, **extra}
        if password is not None:
            data["password"] = password
        return self.post(action, data)

    def stale_reauth(self) -> None:
        """Make the last re-authentication older than REAUTH_SECONDS."""
        with self.client.session_transaction() as sess:
            sess["reauth_at"] = time.time() - self.app.config["REAUTH_SECONDS"] - 1


def sign_in(app: Flask, email: str) -> Wizard:
    """Sign a fresh client in and return its wizard."""
    client = app.test_client()
    response = login(client, email)
    assert response.status_code == 302, response.get_data(as_text=True)
    return Wizard(app, client)


@pytest.fixture
def deployment() -> str:
    """The installation's deployment mode; a test parametrizes it to change it."""
    return "shared"


@pytest.fixture
def app_config(app_config: dict, deployment: str) -> dict:
    """The conftest settings in the deployment mode of the test."""
    app_config["BYOK_DEPLOYMENT"] = deployment
    app_config["SALES_URL"] = "https://sales.example.test/upgrade?from=portal"
    return app_config


@pytest.fixture
def admin(app, login_as, client) -> Wizard:
    """The wizard as admin of org A (Organization Community)."""
    login_as("admin_a")
    return Wizard(app, client)
