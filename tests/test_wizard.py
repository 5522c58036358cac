"""The BYOK wizard on Organization Settings → Compliance Policies, over real services.

Every step is driven as htmx would drive it (``HX-Request`` plus the CSRF header) and, where
it matters, as a plain form post (the full-page fallback). What the portal stores is checked
in the database itself, and what the data API does with the keys through the API.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal import crypto
from portal.audit.models import AuditEvent
from portal.chat.models import Attachment, Conversation, Message
from portal.db import Base, get_session, utcnow
from portal.keys.models import OrgKey
from portal.models import Organization, User
from tests.conftest import PASSWORD, csrf_token, login

PAGE = "/settings/compliance"
FRAGMENT = f"{PAGE}/byok"
POST_ROUTES = ("generate", "test", "enable", "disable", "lost", "restore", "revoke")
API = "/api/v1"
REAUTH_MESSAGE = "Enter your password to confirm this key operation."
WRONG_PASSWORD = "That password is not correct."
REQUIRED_MESSAGE = "BYOK is required for Dedicated and On-Premise deployments"


# --- reading HTML ---------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


@dataclass
class Node:
    """An element of a parsed page: tag, attributes, children and parent."""

    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """Return the text content, whitespace collapsed."""
        parts: list[str] = []
        for child in self.children:
            parts.append(child if isinstance(child, str) else child.text())
        return " ".join(" ".join(parts).split())

    def walk(self):
        """Yield every element below this one, depth first."""
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, **attrs: str) -> list[Node]:
        """Return the elements whose attributes match (``data_testid`` means data-testid)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [n for n in self.walk() if all(n.attrs.get(k) == v for k, v in wanted.items())]

    def find(self, **attrs: str) -> Node | None:
        """Return the first matching element, or None."""
        found = self.find_all(**attrs)
        return found[0] if found else None

    def ancestors(self):
        """Yield the elements this one is inside, nearest first."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _TreeBuilder(HTMLParser):
    """Build a small tree of Nodes; tolerant of the unclosed tags HTML allows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse_html(html: str) -> Node:
    """Parse a page or fragment into a Node tree."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def feedback(html: str, form: str, field_name: str) -> str:
    """Return the text of a field's feedback container (``<form>-<field>-feedback``)."""
    node = parse_html(html).find(id=f"{form}-{field_name}-feedback")
    assert node is not None, f"no {form}-{field_name}-feedback in:\n{html}"
    return node.text()


def by_testid(html: str, name: str) -> str:
    """Return the text of the element with ``data-testid=name``."""
    node = parse_html(html).find(data_testid=name)
    assert node is not None, f"no data-testid={name} in:\n{html}"
    return node.text()


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


# --- keys -----------------------------------------------------------------------------------


def new_key() -> tuple[bytes, str, str]:
    """Return a fresh key, its base64 text and its fingerprint."""
    key = secrets.token_bytes(32)
    return key, base64.b64encode(key).decode(), fp_of(key)


def fp_of(key: bytes) -> str:
    """Return the fingerprint of a key as the portal shows it."""
    return crypto.fingerprint(crypto.key_id(key))


def key_forms(key: bytes) -> list[bytes]:
    """Every encoding of a key that must never be found at rest: raw, base64 and hex forms."""
    b64 = base64.b64encode(key)
    url = base64.urlsafe_b64encode(key)
    return [
        key,
        b64,
        b64.rstrip(b"="),
        url,
        url.rstrip(b"="),
        key.hex().encode(),
        key.hex().upper().encode(),
    ]  # noqa: E501


def _as_bytes(value: Any) -> bytes | None:
    """Return a stored value as bytes for scanning, or None for numbers, dates and NULL."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return None


def scan_database(app: Flask, keys: list[bytes]) -> list[str]:
    """Return 'table.column' for every stored value holding any form of any of the keys."""
    hits = []
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for column, value in row._mapping.items():
                    raw = _as_bytes(value)
                    if raw and any(form in raw for k in keys for form in key_forms(k)):
                        hits.append(f"{table.name}.{column}")
    return hits


def scan_redis(app: Flask, keys: list[bytes]) -> list[str]:
    """Return the Redis keys whose name or value holds any form of any of the keys."""
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    hits = []
    for name in r.scan_iter(count=1000):
        kind = r.type(name).decode()
        values: list[bytes] = [name]
        if kind == "string":
            values.append(r.get(name) or b"")
        elif kind == "hash":
            values += [b for pair in r.hgetall(name).items() for b in pair]
        elif kind == "list":
            values += r.lrange(name, 0, -1)
        elif kind == "set":
            values += list(r.smembers(name))
        elif kind == "zset":
            values += r.zrange(name, 0, -1)
        elif kind == "stream":
            values += [repr(e).encode() for e in r.xrange(name)]
        if any(form in v for v in values for k in keys for form in key_forms(k)):
            hits.append(name.decode(errors="replace"))
    return hits


def session_cookie(app: Flask, client: FlaskClient) -> dict:
    """Return the contents of the client's (signed, not encrypted) session cookie."""
    cookie = client.get_cookie(app.config.get("SESSION_COOKIE_NAME", "session"))
    assert cookie is not None
    return app.session_interface.get_signing_serializer(app).loads(cookie.value)


# --- organisations, users, data -------------------------------------------------------------


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


class Api:
    """A bearer-token client of the data API, used only as a client."""

    def __init__(self, app: Flask, company_id: uuid.UUID) -> None:
        """Create a token for the organisation and a client of its own."""
        from portal.chat.service import create_token

        with app.app_context():
            db = get_session()
            token = create_token(db, company_id, "wizard tests")
            db.commit()
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"}

    def create_conversation(self, title: str = "plans"):
        """POST a conversation and return the response."""
        return self.client.post(
            f"{API}/conversations", json={"title": title, "metadata": {}}, headers=self.headers
        )

    def conversation(self, title: str = "plans") -> str:
        """Create a conversation and return its id."""
        response = self.create_conversation(title)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def post_message(self, conv_id: str, body: str):
        """POST a message and return the response."""
        return self.client.post(
            f"{API}/conversations/{conv_id}/messages",
            json={"body": body, "author": "ada"},
            headers=self.headers,
        )

    def message(self, conv_id: str, body: str) -> str:
        """Add a message and return its id."""
        response = self.post_message(conv_id, body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def read(self, conv_id: str) -> dict:
        """GET a conversation with its messages."""
        response = self.client.get(f"{API}/conversations/{conv_id}", headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def bodies(self, conv_id: str) -> list[Any]:
        """Return the bodies of a conversation's messages (text, or an unreadable status)."""
        return [m["body"] for m in self.read(conv_id)["messages"]]


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


# --- driving the wizard ---------------------------------------------------------------------


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


# --- tiers and eligibility ------------------------------------------------------------------

TIER_MATRIX = [
    # (deployment, tier, tier shown, BYOK section, BYOK required)
    ("shared", "community", "Community (shared)", False, False),
    ("shared", "org_community", "Community (shared)", True, False),
    ("shared", "dedicated", "Dedicated (isolated)", True, True),
    ("shared", "on_prem", "Dedicated (isolated)", True, True),
    ("dedicated", "community", "Dedicated (isolated)", True, True),
    ("dedicated", "org_community", "Dedicated (isolated)", True, True),
    ("on_prem", "org_community", "Dedicated (isolated)", True, True),
    ("on_prem", "on_prem", "Dedicated (isolated)", True, True),
]


@pytest.mark.parametrize(
    ("deployment", "tier", "shown", "has_byok", "required"),
    TIER_MATRIX,
    ids=[f"{d}-{t}" for d, t, *_ in TIER_MATRIX],
)
def test_compliance_page_shows_tier_per_deployment_mode_and_byok_only_when_eligible(
    app, password_hash, deployment, tier, shown, has_byok, required
):
    from portal.models import TIER_LABELS

    org = add_org(app, password_hash, tier)
    html = sign_in(app, org["admin"]).page()
    assert by_testid(html, "deployment-tier") == shown
    assert by_testid(html, "deployment-mode") == deployment
    assert TIER_LABELS[tier] in html
    tree = parse_html(html)
    assert (tree.find(id="byok") is not None) == has_byok
    assert ("BYOK Configuration" in html) == has_byok
    assert (tree.find(id="byok-upgrade") is not None) == (not has_byok)
    if has_byok:
        assert by_testid(html, "byok-state").startswith("Off")
        assert ("required for this deployment" in html) == required
        assert f"{PAGE}/byok/generate" in byok_forms(html)


def test_community_account_sees_explanation_and_upgrade_prompt_to_sales_url(app, password_hash):
    org = add_org(app, password_hash, "community")
    wizard = sign_in(app, org["admin"])
    for html in (
        wizard.page(),
        wizard.client.get(FRAGMENT, headers={"HX-Request": "true"}).get_data(as_text=True),
    ):
        upgrade = parse_html(html).find(id="byok-upgrade")
        assert upgrade is not None
        assert "cannot bring their own key" in upgrade.text()
        links = [n.attrs["href"] for n in upgrade.walk() if n.tag == "a"]
        assert links == ["https://sales.example.test/upgrade?from=portal"]
        assert "BYOK Configuration" not in html
        assert byok_forms(html) == []


def test_community_account_cannot_generate_test_or_enable_by_posting(app, password_hash):
    org = add_org(app, password_hash, "community")
    wizard = sign_in(app, org["admin"])
    _, text, fp = new_key()
    generated = wizard.post("generate")
    assert generated.status_code == 403
    assert "not available for Community" in generated.get_data(as_text=True)
    tested = wizard.test_key(text)
    assert tested.status_code == 422
    assert "not available for Community" in feedback(
        tested.get_data(as_text=True), "enable", "form"
    )
    enabled = wizard.enable(text, tested=fp)
    assert enabled.status_code == 422
    assert {k.origin for k in org_keys(app, org["id"])} == {"platform"}
    assert events(app, "BYOK.key_generated", outcome="success") == []
    refused = events(app, "BYOK.key_generated", org["id"], outcome="failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "not_eligible"}]


# --- roles and sign-in ----------------------------------------------------------------------

ROLE_MATRIX = {"admin_a": True, "auditor_a": False, "member_a": False, "support": False}


@pytest.mark.parametrize("who", list(ROLE_MATRIX))
@pytest.mark.parametrize("path", [PAGE, FRAGMENT])
def test_role_matrix_over_compliance_pages(app, login_as, who, path):
    client = login_as(who)
    status = client.get(path, headers={"HX-Request": "true"}).status_code
    assert status == (200 if who in ("admin_a", "auditor_a") else 403)


@pytest.mark.parametrize("who", ["auditor_a", "member_a", "support"])
@pytest.mark.parametrize("action", POST_ROUTES)
def test_only_admins_may_post_any_key_operation(app, login_as, orgs, who, action):
    client = login_as(who)
    wizard = Wizard(app, client, token_path="/")
    _, text, fp = new_key()
    data = {
        "key": text,
        "tested_fingerprint": fp,
        "password": PASSWORD,
        "confirm_slug": orgs["a"]["slug"],
        "acknowledge": "y",
    }
    for htmx in (True, False):
        response = wizard.post(action, data, htmx=htmx)
        assert response.status_code == 403, response.get_data(as_text=True)
        assert text not in response.get_data(as_text=True)
    endpoint = "compliance." + ("declare_lost" if action == "lost" else action)
    denied = events(app, "auth.access_denied")
    assert [json.loads(e.details)["endpoint"] for e in denied] == [endpoint, endpoint]
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]
    assert events(app, "BYOK.key_test") == []


def test_admin_may_post_every_key_operation(app, admin, orgs):
    """The positive half of the role matrix: an admin is never refused with 403."""
    _, text, fp = new_key()
    data = {"key": text, "tested_fingerprint": fp, "password": PASSWORD}
    for action in POST_ROUTES:
        data["confirm_slug"] = orgs["a"]["slug"]
        response = admin.post(action, data)
        assert response.status_code in (200, 422), (action, response.status_code)


def test_auditor_sees_the_status_read_only_with_no_key_forms(app, admin, orgs):
    _, text, _ = new_key()
    fp = admin.enable_ok(text)
    admin_html = admin.page()
    assert {f"{PAGE}/byok/disable", f"{PAGE}/byok/lost", f"{PAGE}/byok/revoke"} <= set(
        byok_forms(admin_html)
    )
    auditor = sign_in(app, orgs["users"]["auditor_a"])
    for html in (
        auditor.page(),
        auditor.client.get(FRAGMENT, headers={"HX-Request": "true"}).get_data(as_text=True),
    ):
        assert by_testid(html, "active-fingerprint") == fp
        assert by_testid(html, "byok-state") == "On"
        assert byok_forms(html) == []
        assert parse_html(html).find(id="enable-key") is None
        assert "key operations are for organisation admins" in html


@pytest.mark.parametrize("path", [PAGE, FRAGMENT])
def test_signed_out_visitor_is_sent_to_login(client, path):
    plain = client.get(path)
    assert plain.status_code == 302
    assert plain.headers["Location"].startswith("/login")
    hx = client.get(path, headers={"HX-Request": "true"})
    assert hx.status_code == 401
    assert hx.headers["HX-Redirect"].startswith("/login")


@pytest.mark.parametrize("action", POST_ROUTES)
def test_signed_out_post_is_sent_to_login_and_changes_nothing(app, client, action):
    token = csrf_token(client, "/login")
    _, text, _ = new_key()
    plain = client.post(f"{PAGE}/byok/{action}", data={"key": text, "csrf_token": token})
    assert plain.status_code == 302
    assert plain.headers["Location"].startswith("/login")
    hx = client.post(
        f"{PAGE}/byok/{action}",
        data={"key": text},
        headers={"HX-Request": "true", "X-CSRFToken": token},
    )
    assert hx.status_code == 401
    assert hx.headers["HX-Redirect"].startswith("/login")
    assert events(app, "BYOK.key_test") == []
    assert events(app, "BYOK.key_generated") == []


def test_admin_of_another_organisation_sees_and_changes_only_its_own_keys(app, admin, orgs):
    key_a, text_a, _ = new_key()
    fp_a = admin.enable_ok(text_a)
    other = sign_in(app, orgs["users"]["admin_b"])
    html = other.page()
    assert fp_a not in html
    assert by_testid(html, "byok-state").startswith("Off")
    # Org B cannot restore (or otherwise claim) org A's key: it never had it.
    restored = other.post("restore", {"key": text_a, "password": PASSWORD})
    assert restored.status_code == 422
    assert "No key of your organisation has fingerprint" in feedback(
        restored.get_data(as_text=True), "restore", "key"
    )
    # Org B's admin enabling, then disabling, its own key leaves org A's untouched.
    _, text_b, _ = new_key()
    other.enable_ok(text_b)
    assert other.confirm("disable", orgs["b"]["slug"], acknowledge="y").status_code == 200
    assert key_by_fp(app, orgs["a"]["id"], fp_a).state == "active"
    # Org A's slug does not confirm anything for org B.
    _, text_c, _ = new_key()
    other.enable_ok(text_c)
    wrong = other.confirm("revoke", orgs["a"]["slug"])
    assert wrong.status_code == 422
    assert orgs["b"]["slug"] in feedback(wrong.get_data(as_text=True), "revoke", "confirm_slug")
    assert key_by_fp(app, orgs["a"]["id"], fp_a).sealed is not None


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
@pytest.mark.parametrize("action", POST_ROUTES)
def test_every_post_without_csrf_token_is_refused_with_400(app, admin, orgs, action, htmx):
    _, text, fp = new_key()
    data = {
        "key": text,
        "tested_fingerprint": fp,
        "password": PASSWORD,
        "confirm_slug": orgs["a"]["slug"],
        "acknowledge": "y",
    }
    response = admin.post(action, data, htmx=htmx, csrf=False)
    assert response.status_code == 400
    assert text not in response.get_data(as_text=True)
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]
    assert events(app, "BYOK.key_test") == [] and events(app, "BYOK.key_generated") == []


# --- caching --------------------------------------------------------------------------------


def test_page_fragments_and_answers_are_never_cached(app, admin):
    _, text, _ = new_key()
    responses = {
        "page": admin.client.get(PAGE),
        "fragment": admin.client.get(FRAGMENT, headers={"HX-Request": "true"}),
        "generate": admin.post("generate"),
        "generate-plain": admin.post("generate", htmx=False),
        "test": admin.test_key(text),
        "test-refused": admin.test_key("abc"),
        "enable-refused": admin.enable(text, tested=""),
        "enable": admin.enable(text),
    }
    for name, response in responses.items():
        assert response.status_code in (200, 422), name
        assert "no-store" in response.headers.get("Cache-Control", ""), name


# --- generate -------------------------------------------------------------------------------


def test_generate_shows_a_fresh_32_byte_key_once_in_a_history_free_no_store_element(admin):
    response = admin.post("generate")
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    html = response.get_data(as_text=True)
    tree = parse_html(html)
    shown = tree.find(data_testid="generated-key")
    key = base64.b64decode(shown.text(), validate=True)
    assert len(key) == 32
    assert by_testid(html, "generated-fingerprint") == fp_of(key)
    assert any(a.attrs.get("hx-history") == "false" for a in shown.ancestors())
    assert "It will not be shown again" in html
    assert tree.find(data_copy_target="generated-key") is not None
    assert tree.find(data_download_target="generated-key") is not None
    again, _ = admin.generate()
    assert again != key


def test_generate_as_plain_post_shows_the_key_on_the_full_page(admin):
    response = admin.post("generate", htmx=False)
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    html = response.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in html
    key = base64.b64decode(by_testid(html, "generated-key"), validate=True)
    assert by_testid(html, "generated-fingerprint") == fp_of(key)
    shown = parse_html(html).find(data_testid="generated-key")
    assert any(a.attrs.get("hx-history") == "false" for a in shown.ancestors())


def test_generated_key_is_kept_nowhere_in_database_redis_session_or_logs(app, admin, orgs, caplog):
    caplog.set_level(logging.DEBUG)
    key, fp = admin.generate()
    assert scan_database(app, [key]) == []
    assert scan_redis(app, [key]) == []
    cookie = session_cookie(app, admin.client)
    assert cookie.get("generated_fingerprints") == [fp]
    assert not any(form.decode("latin-1") in json.dumps(cookie) for form in key_forms(key))
    assert not any(form.decode("latin-1") in caplog.text for form in key_forms(key))
    # Only the fingerprint is audited, and no key row exists until the key is pasted back.
    generated = events(app, "BYOK.key_generated", orgs["a"]["id"])
    assert [json.loads(e.details) for e in generated] == [{"fingerprint": fp}]
    assert fp not in {k.fingerprint for k in org_keys(app, orgs["a"]["id"])}
    # The section reloaded afterwards does not show it again.
    assert base64.b64encode(key).decode() not in admin.page()


# --- import validation ----------------------------------------------------------------------

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


def _secret_parts(text: str) -> list[str]:
    """The parts of a pasted text that must not be echoed: the text and its long runs."""
    stripped = text.strip()
    if not stripped:
        return []
    parts = [stripped]
    for token in stripped.replace('"', " ").replace("\n", " ").split():
        if len(token) >= 12 and not token.startswith("-----"):
            parts.append(token)
    return parts


@pytest.mark.parametrize("step", ["test", "enable"])
@pytest.mark.parametrize(
    ("text", "says"), [(t, s) for _, t, s in INVALID_KEYS], ids=[i for i, *_ in INVALID_KEYS]
)
def test_each_invalid_key_kind_is_refused_next_to_the_field_without_echo(
    app, admin, orgs, step, text, says
):
    data = {"key": text, "tested_fingerprint": "", "password": PASSWORD}
    response = admin.post(step, data)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    message = feedback(html, "enable", "key")
    for phrase in says:
        assert phrase in message
    for part in _secret_parts(text):
        assert part not in html
    assert by_testid(admin.page(), "byok-state").startswith("Off")
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


@pytest.mark.parametrize(
    ("text", "says"), [(t, s) for _, t, s in INVALID_KEYS], ids=[i for i, *_ in INVALID_KEYS]
)
def test_each_invalid_key_kind_is_refused_on_restore_with_the_same_message(admin, text, says):
    response = admin.post("restore", {"key": text, "password": PASSWORD})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    message = feedback(html, "restore", "key")
    for phrase in says:
        assert phrase in message
    for part in _secret_parts(text):
        assert part not in html


@pytest.mark.parametrize(
    "wrap",
    ["{}\n", "  {}  ", "\r\n\t{}\r\n", "{}\n\n"],
    ids=["openssl-newline", "spaces", "crlf-tabs", "blank-lines"],
)
def test_key_with_surrounding_whitespace_and_trailing_newline_is_accepted(admin, wrap):
    key, text, fp = new_key()
    pasted = wrap.format(text)
    response = admin.test_key(pasted)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert by_testid(response.get_data(as_text=True), "tested-fingerprint") == fp
    enabled = admin.enable(pasted)
    assert enabled.status_code == 200, enabled.get_data(as_text=True)
    assert by_testid(enabled.get_data(as_text=True), "active-fingerprint") == fp


# --- test key -------------------------------------------------------------------------------


def test_test_key_shows_result_and_fingerprint_and_arms_save_and_enable(admin):
    _, text, fp = new_key()
    response = admin.test_key(text)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    ok = feedback(html, "enable", "key")
    assert "Test passed" in ok and fp in ok
    tested = parse_html(html).find(id="enable-tested")
    assert tested.attrs["value"] == fp
    assert tested.attrs.get("hx-swap-oob") == "true"
    assert text not in html


def test_test_key_records_exactly_one_audit_event_with_the_fingerprint_only(app, admin, orgs):
    key, text, fp = new_key()
    assert admin.test_key(text + "\n").status_code == 200
    tests = events(app, "BYOK.key_test", orgs["a"]["id"])
    assert len(tests) == 1
    assert tests[0].outcome == "success"
    assert tests[0].actor_label == orgs["users"]["admin_a"]
    assert json.loads(tests[0].details) == {"fingerprint": fp}
    assert scan_database(app, [key]) == []
    # Testing stores no key: nothing is enabled by a test.
    assert fp not in {k.fingerprint for k in org_keys(app, orgs["a"]["id"])}


def test_failed_test_key_is_audited_with_the_reason_only(app, admin, orgs):
    response = admin.test_key("9f" * 32)
    assert response.status_code == 422
    tests = events(app, "BYOK.key_test", orgs["a"]["id"])
    assert [(e.outcome, json.loads(e.details)) for e in tests] == [("failure", {"reason": "hex"})]


# --- save & enable --------------------------------------------------------------------------


def test_save_and_enable_is_refused_without_a_test_of_the_same_key(app, admin, orgs):
    _, text, fp = new_key()
    _, _, other_fp = new_key()
    for tested in ("", other_fp, fp.replace(":", "")):
        response = admin.enable(text, tested=tested)
        assert response.status_code == 422
        assert "Test this key first" in feedback(response.get_data(as_text=True), "enable", "key")
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]
    assert events(app, "BYOK.enabled", outcome="success") == []
    refused = events(app, "BYOK.enabled", orgs["a"]["id"], outcome="failure")
    assert [json.loads(e.details)["reason"] for e in refused] == ["untested"] * 3


def test_save_and_enable_with_a_wrong_password_is_refused_and_audited(app, admin, orgs):
    _, text, _ = new_key()
    response = admin.enable(text, password="not my password")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert feedback(html, "enable", "password") == WRONG_PASSWORD
    assert "not my password" not in html
    failed = events(app, "auth.reauth_failed", orgs["a"]["id"])
    assert [(e.outcome, e.actor_label) for e in failed] == [("failure", orgs["users"]["admin_a"])]
    assert "not my password" not in failed[0].details
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


@pytest.mark.parametrize("password", [None, ""], ids=["missing", "empty"])
def test_save_and_enable_needs_the_password_when_reauth_is_not_fresh(app, admin, orgs, password):
    _, text, _ = new_key()
    response = admin.enable(text, password=password)
    assert response.status_code == 422
    assert feedback(response.get_data(as_text=True), "enable", "password") == REAUTH_MESSAGE
    assert [k.origin for k in org_keys(app, orgs["a"]["id"])] == ["platform"]


def test_wrong_password_keeps_the_tested_key_armed_for_the_retry(app, admin, orgs):
    _, text, fp = new_key()
    admin.test_key(text)
    refused = admin.enable(text, tested=fp, password="mistyped")
    assert refused.status_code == 422
    # htmx swaps this hidden field into the form: what it holds is what the retry submits.
    armed = parse_html(refused.get_data(as_text=True)).find(id="enable-tested")
    retry = admin.enable(text, tested=armed.attrs["value"], password=PASSWORD)
    assert retry.status_code == 200, feedback(retry.get_data(as_text=True), "enable", "key")
    assert by_testid(retry.get_data(as_text=True), "active-fingerprint") == fp


def test_save_and_enable_with_password_enables_and_reauth_stays_fresh_for_a_while(app, admin, orgs):
    key, text, fp = new_key()
    response = admin.enable(text)
    assert response.status_code == 200
    assert response.headers["HX-Retarget"] == "#byok"
    assert response.headers["HX-Reswap"] == "outerHTML"
    html = response.get_data(as_text=True)
    assert parse_html(html).find(id="byok") is not None
    assert f"BYOK is enabled with key {fp}" in html
    assert by_testid(html, "byok-state") == "On"
    assert by_testid(html, "active-fingerprint") == fp
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.origin, row.created_by) == ("active", "imported", "admin@a.example")
    assert row.sealed and key not in row.sealed
    enabled = events(app, "BYOK.enabled", orgs["a"]["id"])
    assert [json.loads(e.details) for e in enabled] == [{"fingerprint": fp, "origin": "imported"}]
    # Within REAUTH_SECONDS the next key operation needs no password.
    assert "confirmed recently" in admin.page()
    disabled = admin.confirm("disable", orgs["a"]["slug"], password=None, acknowledge="y")
    assert disabled.status_code == 200, disabled.get_data(as_text=True)
    assert by_testid(disabled.get_data(as_text=True), "byok-state").startswith("Off")


def test_reauth_expires_after_reauth_seconds(app, admin, orgs):
    _, text, _ = new_key()
    admin.enable_ok(text)
    admin.stale_reauth()
    assert "confirmed recently" not in admin.page()
    response = admin.confirm("disable", orgs["a"]["slug"], password=None, acknowledge="y")
    assert response.status_code == 422
    assert feedback(response.get_data(as_text=True), "disable", "password") == REAUTH_MESSAGE
    assert by_testid(admin.page(), "byok-state") == "On"


def test_enable_refuses_a_key_the_organisation_used_before(app, admin, orgs):
    _, text, _ = new_key()
    admin.enable_ok(text)
    assert admin.confirm("disable", orgs["a"]["slug"], acknowledge="y").status_code == 200
    again = admin.enable(text)
    assert again.status_code == 422
    assert "used by your organisation before" in feedback(
        again.get_data(as_text=True), "enable", "key"
    )


def test_enable_while_byok_is_on_is_refused(app, admin, orgs):
    _, first, fp = new_key()
    admin.enable_ok(first)
    _, second, _ = new_key()
    response = admin.enable(second)
    assert response.status_code == 422
    assert "already enabled" in feedback(response.get_data(as_text=True), "enable", "form")
    assert [k.fingerprint for k in org_keys(app, orgs["a"]["id"]) if k.state == "active"] == [fp]


def test_after_enable_new_api_data_carries_the_byok_key_id_and_older_data_keeps_the_platform_key(
    app, admin, orgs
):
    api = Api(app, orgs["a"]["id"])
    platform = platform_key_ids(app, orgs["a"]["id"])
    conv = api.conversation("before")
    old_msg = api.message(conv, "written before BYOK")
    key, text, fp = new_key()
    admin.enable_ok(text)
    byok_id = crypto.key_id(key).hex()
    new_msg = api.message(conv, "written after BYOK")
    new_conv = api.conversation("after")
    upload = api.client.post(
        f"{API}/conversations/{new_conv}/attachments",
        data={"file": (io.BytesIO(b"report"), "r.txt", "text/plain")},
        content_type="multipart/form-data",
        headers=api.headers,
    )
    assert upload.status_code == 201
    assert key_id_of(app, Message, old_msg) in platform
    assert key_id_of(app, Conversation, conv) in platform
    assert key_id_of(app, Message, new_msg) == byok_id
    assert key_id_of(app, Conversation, new_conv) == byok_id
    assert key_id_of(app, Attachment, upload.get_json()["id"]) == byok_id
    assert api.bodies(conv) == ["written before BYOK", "written after BYOK"]
    html = admin.page()
    assert by_testid(html, "platform-items").startswith("2 items")
    assert key_row(html, fp)[3:6] == ["1", "1", "1"]


# --- status panel ---------------------------------------------------------------------------


def test_status_panel_shows_generated_key_origin_enabler_rotation_due_and_counts(app, admin, orgs):
    key, shown_fp = admin.generate()
    text = base64.b64encode(key).decode()
    api = Api(app, orgs["a"]["id"])
    conv = api.conversation()
    fp = admin.enable_ok(text)
    assert fp == shown_fp
    for n in range(3):
        api.message(conv, f"m{n}")
    html = admin.page()
    assert by_testid(html, "byok-state") == "On"
    assert by_testid(html, "active-fingerprint") == fp
    tree = parse_html(html)
    facts = tree.find(id="byok-status").text()
    assert "generated here" in facts
    assert f"by {orgs['users']['admin_a']}" in facts
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert row.origin == "generated"
    due = (row.state_changed_at + timedelta(days=90)).strftime("%Y-%m-%d")
    assert by_testid(html, "rotation-due") == f"{due} (every 90 days)"
    assert "Rotation is overdue" not in html
    assert key_row(html, fp)[:6] == [fp, "active", "generated", "3", "0", "0"]
    platform_fp = next(
        k.fingerprint for k in org_keys(app, orgs["a"]["id"]) if k.origin == "platform"
    )
    assert key_row(html, platform_fp)[:6] == [
        platform_fp,
        "decrypt-only",
        "platform",
        "0",
        "0",
        "1",
    ]
    assert by_testid(html, "disable-count") == "3"


def test_key_generated_in_another_session_counts_as_imported(app, admin, orgs):
    key, _ = admin.generate()
    elsewhere = sign_in(app, orgs["users"]["admin_a"])
    fp = elsewhere.enable_ok(base64.b64encode(key).decode())
    assert key_by_fp(app, orgs["a"]["id"], fp).origin == "imported"
    assert "imported" in parse_html(elsewhere.page()).find(id="byok-status").text()


def test_rotation_overdue_warning_after_the_organisation_rotation_period(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    with app.app_context():
        db = get_session()
        db.get(Organization, orgs["a"]["id"]).rotation_period_days = 7
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        row.created_at = row.state_changed_at = utcnow() - timedelta(days=8)
        db.commit()
        due = (row.state_changed_at + timedelta(days=7)).strftime("%Y-%m-%d")
    html = admin.page()
    assert by_testid(html, "rotation-due") == f"{due} (every 7 days) Rotation is overdue"
    with app.app_context():
        db = get_session()
        db.get(Organization, orgs["a"]["id"]).rotation_period_days = 30
        db.commit()
    assert "Rotation is overdue" not in admin.page()


def test_revoke_and_restore_do_not_reset_the_rotation_clock(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        row.created_at = row.state_changed_at = utcnow() - timedelta(days=100)
        db.commit()
    assert "Rotation is overdue" in admin.page()
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    assert admin.post("restore", {"key": text}).status_code == 200
    html = admin.page()
    assert by_testid(html, "active-fingerprint") == fp
    assert "Rotation is overdue" in html


def test_every_wizard_field_has_a_label_and_its_feedback_container(app, admin, orgs):
    """Error text is tied to its field (aria-describedby), and every control is labelled."""
    _, text, _ = new_key()
    pages = [admin.page()]  # BYOK off: the enable step
    admin.enable_ok(text)
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    pages.append(admin.page())  # revoked: the restore step
    assert admin.post("restore", {"key": text}).status_code == 200
    pages.append(admin.page())
    seen = set()
    for html in pages:
        tree = parse_html(html)
        labels = {n.attrs.get("for") for n in tree.walk() if n.tag == "label"}
        wrapped = {c.attrs.get("id") for n in tree.walk() if n.tag == "label" for c in n.walk()}
        for form in tree.find_all():
            if form.tag != "form" or not form.attrs.get("action", "").startswith(f"{PAGE}/byok"):
                continue
            name = form.attrs.get("id", "").removesuffix("-form")
            for control in form.walk():
                if (
                    control.tag not in ("input", "textarea")
                    or control.attrs.get("type") == "hidden"
                ):
                    continue
                cid = control.attrs.get("id")
                assert cid and (cid in labels or cid in wrapped), (name, control.attrs)
                expected = f"{name}-{control.attrs['name']}-feedback"
                assert expected in control.attrs.get("aria-describedby", "").split(), cid
                assert tree.find(id=expected) is not None, expected
                seen.add(cid)
    assert {
        "enable-key",
        "enable-password",
        "restore-key",
        "restore-password",
        "disable-confirm_slug",
        "disable-acknowledge",
        "disable-password",
        "lost-confirm_slug",
        "revoke-password",
    } <= seen


# --- disable --------------------------------------------------------------------------------


def test_disable_requires_reauth_slug_and_acknowledgement_then_new_data_uses_a_platform_key(
    app, admin, orgs
):
    slug = orgs["a"]["slug"]
    api = Api(app, orgs["a"]["id"])
    key, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "under BYOK")
    html = admin.page()
    assert by_testid(html, "disable-count") == "2"
    admin.stale_reauth()
    steps = [
        ({"confirm_slug": slug, "acknowledge": "y"}, "password", REAUTH_MESSAGE),
        (
            {"confirm_slug": "not-" + slug, "acknowledge": "y", "password": PASSWORD},
            "confirm_slug",
            f"Type the organisation's slug ({slug}) to confirm.",
        ),
        (
            {"confirm_slug": slug},
            "acknowledge",
            "Confirm that your compliance and legal teams were consulted.",
        ),
    ]
    for data, field_name, message in steps:
        response = admin.post("disable", data)
        assert response.status_code == 422, data
        assert feedback(response.get_data(as_text=True), "disable", field_name) == message
        assert by_testid(admin.page(), "byok-state") == "On"
    done = admin.post("disable", {"confirm_slug": f" {slug} ", "acknowledge": "y"})
    assert done.status_code == 200
    assert "BYOK is disabled" in done.get_data(as_text=True)
    assert by_testid(done.get_data(as_text=True), "byok-state").startswith("Off")
    after = api.message(conv, "after disable")
    assert key_id_of(app, Message, after) in platform_key_ids(app, orgs["a"]["id"])
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "decrypt_only"
    assert api.bodies(conv) == ["under BYOK", "after disable"]
    disabled = events(app, "BYOK.disabled", orgs["a"]["id"], outcome="success")
    assert len(disabled) == 1 and json.loads(disabled[0].details)["fingerprint"] == fp
    refused = events(app, "BYOK.disabled", orgs["a"]["id"], outcome="failure")
    assert [json.loads(e.details) for e in refused] == [
        {"reason": "slug_mismatch"},
        {"reason": "not_acknowledged"},
    ]


@pytest.mark.parametrize(
    ("deployment", "tier"),
    [("shared", "dedicated"), ("shared", "on_prem"), ("dedicated", "org_community")],
)
def test_disable_is_refused_with_an_explanation_where_byok_is_required(
    app, password_hash, deployment, tier
):
    org = add_org(app, password_hash, tier)
    wizard = sign_in(app, org["admin"])
    _, text, fp = new_key()
    wizard.enable_ok(text)
    html = wizard.page()
    assert f"{PAGE}/byok/disable" not in byok_forms(html)
    assert "required for this deployment and cannot be disabled" in html
    response = wizard.confirm("disable", org["slug"], acknowledge="y")
    assert response.status_code == 422
    assert REQUIRED_MESSAGE in feedback(response.get_data(as_text=True), "disable", "form")
    assert key_by_fp(app, org["id"], fp).state == "active"


def test_disable_when_byok_is_off_is_refused(admin, orgs):
    response = admin.confirm("disable", orgs["a"]["slug"], acknowledge="y")
    assert response.status_code == 422
    assert "BYOK is not enabled." in feedback(response.get_data(as_text=True), "disable", "form")


# --- declare lost ---------------------------------------------------------------------------


def test_declare_lost_makes_items_unreadable_and_community_org_falls_back_to_platform_key(
    app, admin, orgs
):
    api = Api(app, orgs["a"]["id"])
    before = api.conversation("before")
    api.message(before, "platform data")
    _, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation("secret plans")
    api.message(conv, "byok data")
    refused = admin.confirm("lost", "wrong-slug")
    assert refused.status_code == 422
    assert "to confirm" in feedback(refused.get_data(as_text=True), "lost", "confirm_slug")
    response = admin.confirm("lost", orgs["a"]["slug"])
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"Key {fp} is declared lost" in html
    assert key_row(html, fp)[1] == "lost"
    assert (
        f"2 items under key {fp} are unreadable" in parse_html(html).find(id="byok-status").text()
    )
    assert parse_html(html).find(id="restore-form") is not None
    assert by_testid(html, "byok-state").startswith("Off")
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.sealed) == ("lost", None)
    read = api.read(conv)
    assert read["status"] == "unreadable"
    assert read["messages"][0]["body"]["status"] == "unreadable"
    assert api.bodies(before) == ["platform data"]
    after = api.message(before, "new platform data")
    assert key_id_of(app, Message, after) in platform_key_ids(app, orgs["a"]["id"])
    lost = events(app, "encryption_key.declared_lost", orgs["a"]["id"], outcome="success")
    assert len(lost) == 1 and json.loads(lost[0].details)["fingerprint"] == fp
    refused = events(app, "encryption_key.declared_lost", orgs["a"]["id"], outcome="failure")
    assert [json.loads(e.details) for e in refused] == [{"reason": "slug_mismatch"}]


@pytest.mark.parametrize("tier", ["dedicated", "on_prem"])
def test_declare_lost_on_isolated_tier_blocks_writes_until_a_new_key_is_enabled(
    app, password_hash, tier
):
    org = add_org(app, password_hash, tier)
    wizard = sign_in(app, org["admin"])
    api = Api(app, org["id"])
    _, text, fp = new_key()
    wizard.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "kept under the lost key")
    response = wizard.confirm("lost", org["slug"])
    assert response.status_code == 200
    refused = api.create_conversation()
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "byok_required"
    assert api.post_message(conv, "x").status_code == 409
    html = wizard.page()
    assert parse_html(html).find(id="enable-form") is not None
    assert parse_html(html).find(id="restore-form") is not None
    _, new_text, new_fp = new_key()
    assert wizard.enable_ok(new_text) == new_fp
    assert api.create_conversation().status_code == 201
    assert api.bodies(conv)[0]["status"] == "unreadable"


# --- restore --------------------------------------------------------------------------------


def _lose(admin: Wizard, api: Api, slug: str) -> tuple[str, str, str]:
    """Enable a key, store a message under it, declare it lost; return text, fp, conv id."""
    _, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "kept safe")
    assert admin.confirm("lost", slug).status_code == 200
    return text, fp, conv


def test_restore_refuses_a_key_the_organisation_never_had(app, admin, orgs):
    api = Api(app, orgs["a"]["id"])
    _, fp, conv = _lose(admin, api, orgs["a"]["slug"])
    _, stranger, stranger_fp = new_key()
    response = admin.post("restore", {"key": stranger, "password": PASSWORD})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    message = feedback(html, "restore", "key")
    assert f"No key of your organisation has fingerprint {stranger_fp}" in message
    assert stranger not in html
    failed = events(app, "encryption_key.restore", orgs["a"]["id"])
    assert [(e.outcome, json.loads(e.details)) for e in failed] == [
        ("failure", {"fingerprint": stranger_fp, "reason": "unknown_key"})
    ]
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "lost"
    assert api.bodies(conv)[0]["status"] == "unreadable"


def test_restore_with_the_right_key_makes_the_data_readable_again(app, admin, orgs):
    api = Api(app, orgs["a"]["id"])
    text, fp, conv = _lose(admin, api, orgs["a"]["slug"])
    admin.stale_reauth()
    needs_password = admin.post("restore", {"key": text})
    assert needs_password.status_code == 422
    assert feedback(needs_password.get_data(as_text=True), "restore", "password") == REAUTH_MESSAGE
    response = admin.post("restore", {"key": text + "\n", "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert f"Key {fp} is restored" in html
    assert by_testid(html, "active-fingerprint") == fp
    assert api.bodies(conv) == ["kept safe"]
    assert api.read(conv)["title"] == "plans"
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert row.state == "active" and row.sealed is not None
    assert key_id_of(app, Message, api.message(conv, "again")) == row.key_id
    restored = events(app, "encryption_key.restored", orgs["a"]["id"])
    assert [json.loads(e.details) for e in restored] == [{"fingerprint": fp, "state": "active"}]


def test_restore_of_a_key_that_is_not_lost_is_refused(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    response = admin.post("restore", {"key": text, "password": PASSWORD})
    assert response.status_code == 422
    assert f"Key {fp} is active; there is nothing to restore." in feedback(
        response.get_data(as_text=True), "restore", "key"
    )


def test_restore_of_an_unavailable_key_after_moving_to_another_installation(app, admin, orgs):
    """A sealed copy that this installation's master key cannot unwrap (a backup restored
    elsewhere) leaves the key 'unavailable' until the admin pastes it again."""
    from portal.keys.custody.master_key import MasterKeyCustody
    from portal.keys.service import seal_context

    api = Api(app, orgs["a"]["id"])
    key, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "from the old installation")
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        elsewhere = MasterKeyCustody(secrets.token_bytes(32))
        row.sealed = elsewhere.seal(key, seal_context(row.company_id, row.key_id))
        db.commit()
    html = admin.page()
    assert key_row(html, fp)[1] == "unavailable"
    assert parse_html(html).find(id="restore-form") is not None
    assert api.bodies(conv)[0]["status"] == "unreadable"
    assert api.post_message(conv, "blocked").status_code == 503
    response = admin.post("restore", {"key": text, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert key_row(response.get_data(as_text=True), fp)[1] == "active"
    assert api.bodies(conv) == ["from the old installation"]
    assert api.post_message(conv, "writable again").status_code == 201


def test_restore_of_a_lost_key_after_a_new_key_was_enabled_keeps_the_new_key_encrypting(
    app, password_hash
):
    org = add_org(app, password_hash, "dedicated")
    wizard = sign_in(app, org["admin"])
    api = Api(app, org["id"])
    _, old_text, old_fp = new_key()
    wizard.enable_ok(old_text)
    conv = api.conversation()
    api.message(conv, "under the old key")
    assert wizard.confirm("lost", org["slug"]).status_code == 200
    new, new_text, new_fp = new_key()
    wizard.enable_ok(new_text)
    api.message(conv, "under the new key")
    response = wizard.post("restore", {"key": old_text})
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert key_row(html, old_fp)[1] == "decrypt-only"
    assert by_testid(html, "active-fingerprint") == new_fp
    assert api.bodies(conv) == ["under the old key", "under the new key"]
    later = api.message(conv, "later")
    assert key_id_of(app, Message, later) == crypto.key_id(new).hex()


# --- revoke ---------------------------------------------------------------------------------


def test_revoke_destroys_the_sealed_copy_and_blocks_reads_and_writes_until_restore(
    app, admin, orgs
):
    api = Api(app, orgs["a"]["id"])
    _, text, fp = new_key()
    admin.enable_ok(text)
    conv = api.conversation("kill switch")
    api.message(conv, "before revoke")
    response = admin.confirm("revoke", orgs["a"]["slug"])
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"Access to key {fp} is revoked" in html
    assert key_row(html, fp)[1] == "unavailable"
    row = key_by_fp(app, orgs["a"]["id"], fp)
    assert (row.state, row.sealed) == ("unavailable", None)
    assert api.read(conv)["status"] == "unreadable"
    assert api.bodies(conv)[0]["status"] == "unreadable"
    blocked = api.post_message(conv, "during revoke")
    assert blocked.status_code == 503
    assert blocked.get_json()["error"] == "key_unavailable"
    assert api.create_conversation().status_code == 503
    revoked = events(app, "encryption_key.revoked", orgs["a"]["id"])
    assert [json.loads(e.details) for e in revoked] == [{"fingerprint": fp}]
    restored = admin.post("restore", {"key": text})
    assert restored.status_code == 200, restored.get_data(as_text=True)
    assert api.bodies(conv) == ["before revoke"]
    assert key_id_of(app, Message, api.message(conv, "after restore")) == row.key_id


def test_status_panel_after_revoke_does_not_claim_byok_is_off(app, admin, orgs):
    api = Api(app, orgs["a"]["id"])
    _, text, fp = new_key()
    admin.enable_ok(text)
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    assert api.create_conversation().status_code == 503  # nothing can be written now
    html = admin.page()
    assert not by_testid(html, "byok-state").startswith("Off")


def test_revoke_requires_the_typed_slug_and_password(app, admin, orgs):
    _, text, fp = new_key()
    admin.enable_ok(text)
    admin.stale_reauth()
    no_password = admin.confirm("revoke", orgs["a"]["slug"], password=None)
    assert no_password.status_code == 422
    assert feedback(no_password.get_data(as_text=True), "revoke", "password") == REAUTH_MESSAGE
    wrong = admin.confirm("revoke", "")
    assert wrong.status_code == 422
    assert "to confirm" in feedback(wrong.get_data(as_text=True), "revoke", "confirm_slug")
    assert key_by_fp(app, orgs["a"]["id"], fp).sealed is not None


def test_revoke_is_refused_while_a_rotation_runs(app, admin, orgs):
    from portal.rotation.models import RotationRun

    _, text, fp = new_key()
    admin.enable_ok(text)
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        db.add(
            RotationRun(
                company_id=orgs["a"]["id"],
                old_key_ids=row.key_id,
                new_key_id="0" * 16,
                state="running",
                started_by="admin@a.example",
            )
        )
        db.commit()
    response = admin.confirm("revoke", orgs["a"]["slug"])
    assert response.status_code == 422
    assert "A key rotation is in progress" in feedback(
        response.get_data(as_text=True), "revoke", "form"
    )
    assert key_by_fp(app, orgs["a"]["id"], fp).sealed is not None


# --- isolated tiers and the data API --------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment", "tier"),
    [("shared", "dedicated"), ("shared", "on_prem"), ("on_prem", "org_community")],
)
def test_isolated_organisation_api_writes_answer_409_byok_required_until_enable(
    app, password_hash, deployment, tier
):
    org = add_org(app, password_hash, tier)
    api = Api(app, org["id"])
    refused = api.create_conversation()
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "byok_required"
    with app.app_context():
        assert get_session().scalar(select(func.count()).select_from(Conversation)) == 0
    key, text, _ = new_key()
    sign_in(app, org["admin"]).enable_ok(text)
    conv = api.conversation()
    assert key_id_of(app, Conversation, conv) == crypto.key_id(key).hex()


# --- the full-page fallback -----------------------------------------------------------------


def test_plain_form_posts_walk_the_wizard_with_redirect_and_flash(app, admin, orgs):
    _, text, fp = new_key()
    tested = admin.test_key(text, htmx=False)
    assert tested.status_code == 200
    html = tested.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in html
    assert parse_html(html).find(id="enable-tested").attrs["value"] == fp
    # Without JavaScript the tested key stays in its field (no second paste), never cached.
    assert parse_html(html).find(id="enable-key").text() == text
    assert tested.headers["Cache-Control"] == "no-store"
    enabled = admin.post(
        "enable", {"key": text, "tested_fingerprint": fp, "password": PASSWORD}, htmx=False
    )
    assert enabled.status_code == 303
    assert enabled.headers["Location"].endswith(PAGE)
    assert "HX-Retarget" not in enabled.headers
    page = admin.page()
    assert f"BYOK is enabled with key {fp}" in page
    assert by_testid(page, "active-fingerprint") == fp
    assert f"BYOK is enabled with key {fp}" not in admin.page()  # the flash is shown once
    disabled = admin.post(
        "disable", {"confirm_slug": orgs["a"]["slug"], "acknowledge": "y"}, htmx=False
    )
    assert disabled.status_code == 303
    assert "BYOK is disabled" in admin.page()


def test_plain_form_post_errors_answer_422_with_the_full_page_and_the_message(admin, orgs):
    hexkey = "ab" * 32
    refused = admin.test_key(hexkey, htmx=False)
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in html
    assert "hex-encoded key" in feedback(html, "enable", "key")
    assert parse_html(html).find(id="enable-key").attrs.get("aria-invalid") == "true"
    assert hexkey not in html
    _, text, _ = new_key()
    admin.enable_ok(text)
    wrong = admin.post("disable", {"confirm_slug": "nope", "acknowledge": "y"}, htmx=False)
    assert wrong.status_code == 422
    page = wrong.get_data(as_text=True)
    assert "<h1>Compliance Policies</h1>" in page
    assert "to confirm" in feedback(page, "disable", "confirm_slug")
    details = parse_html(page).find(id="disable-form").parent
    assert details.tag == "details" and "open" in details.attrs


# --- key custody over the whole wizard ------------------------------------------------------


def test_no_key_material_anywhere_after_running_the_whole_wizard(app, admin, orgs, caplog):
    caplog.set_level(logging.DEBUG)
    api = Api(app, orgs["a"]["id"])
    used: list[bytes] = []
    generated, _ = admin.generate()
    used.append(generated)
    text = base64.b64encode(generated).decode()
    admin.enable_ok(text)
    conv = api.conversation()
    api.message(conv, "one")
    assert admin.confirm("revoke", orgs["a"]["slug"]).status_code == 200
    assert admin.post("restore", {"key": text}).status_code == 200
    assert admin.confirm("disable", orgs["a"]["slug"], acknowledge="y").status_code == 200
    imported, imported_text, _ = new_key()
    used.append(imported)
    admin.test_key("  " + imported_text + "\n")
    admin.enable_ok(imported_text)
    api.message(conv, "two")
    assert admin.confirm("lost", orgs["a"]["slug"]).status_code == 200
    admin.post("restore", {"key": base64.b64encode(secrets.token_bytes(32)).decode()})
    assert admin.post("restore", {"key": imported_text}).status_code == 200
    assert api.bodies(conv) == ["one", "two"]
    assert scan_database(app, used) == []
    assert scan_redis(app, used) == []
    assert not any(f.decode("latin-1") in caplog.text for k in used for f in key_forms(k))
    cookie = json.dumps(session_cookie(app, admin.client))
    assert not any(f.decode("latin-1") in cookie for k in used for f in key_forms(k))
    with app.app_context():
        details = [e.details for e in get_session().scalars(select(AuditEvent)) if e.company_id]
    assert details and not any(
        f.decode("latin-1") in d for d in details for k in used for f in key_forms(k)
    )
