"""The security walk's world and its walk over ``app.url_map``: every rule, method and URL,
requests fit for each route, and snapshots of the database and Redis to compare.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from io import BytesIO

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect, select, text
from werkzeug.routing import Rule
from werkzeug.routing.converters import AnyConverter, UUIDConverter

from portal import crypto
from portal.chat.models import Attachment, Conversation, Message
from portal.chat.service import create_token
from portal.db import get_session
from portal.models import Organization, User
from portal.rotation.start import start_rotation
from tests.support.rotation import b64, enable_byok, seed
from tests.support.web import csrf_token, login

# Routes anyone may open. Everything else outside the API must carry ``allowed_roles``.
PUBLIC = {"static", "auth.login", "auth.logout", "health.healthz", "api.openapi"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
# Areas whose pages and fragments show key state (or key events): never cached.
NO_STORE_PREFIXES = ("/settings/compliance", "/rotations", "/settings/audit", "/api/v1")
# Redis keys that requests may legitimately touch: rate-limit counters and RQ's own.
VOLATILE_REDIS = ("LIMITS:", "rq:")
# Samples for URL parameters that are not ids of stored objects.
PLAIN_SAMPLES = {"fmt": ["csv", "jsonl"], "filename": ["app.css"]}
WHO = ["signed_out", "admin_a", "auditor_a", "member_a", "support", "admin_b", "auditor_b"]


# --- the world every walk runs in ------------------------------------------------------------


@dataclass
class World:
    """Organisation A's real objects (plus B's) and a bearer token per organisation."""

    app: Flask
    users: dict[str, str]
    ids: dict[str, str]  # URL parameter name -> id of an org A object
    tokens: dict[str, str]  # "a"/"b" -> bearer token
    clients: dict[str, FlaskClient] = field(default_factory=dict)

    def client(self, who: str) -> FlaskClient:
        """A client signed in as ``who`` (one per user), or a signed-out one."""
        if who not in self.clients:
            client = self.app.test_client()
            if who != "signed_out":
                response = login(client, self.users[who])
                assert response.status_code == 302, (who, response.status_code)
            self.clients[who] = client
        return self.clients[who]


@pytest.fixture
def world(app: Flask, orgs: dict) -> World:
    """BYOK on for org A with data and a rotation in progress; data and a token for org B."""
    org_a, org_b = orgs["a"]["id"], orgs["b"]["id"]
    app.config["RATELIMIT_LOGIN_ADDRESS"] = "1000/minute"
    app.config["RATELIMIT_KEY_OPERATIONS"] = "1000/minute"
    key = enable_byok(app, org_a)
    seed(app, org_a, conversations=1, messages=2, attachments=1, attachment_bytes=64)
    seed(app, org_b, conversations=1, messages=1, attachments=1, attachment_bytes=8)
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_a)
        run = start_rotation(db, org, "cli", b64(key), b64(crypto.generate_key()))
        tokens = {"a": create_token(db, org_a, "walk-a"), "b": create_token(db, org_b, "walk-b")}
        db.commit()

        def first(model, org_id):
            """The id of one row of a model of an organisation."""
            return str(db.scalar(select(model.id).where(model.company_id == org_id)))

        member = db.scalar(select(User.id).where(User.email == orgs["users"]["member_a"]))
        ids = {
            "user_id": str(member),
            "run_id": str(run.id),
            "conv_id": first(Conversation, org_a),
            "msg_id": first(Message, org_a),
            "att_id": first(Attachment, org_a),
        }
    return World(app, orgs["users"], ids, tokens)


# --- walking the URL map ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One concrete request of the walk: a rule, a method and a URL built for it."""

    rule: Rule
    method: str
    url: str
    ids: str  # "none" (no id in the URL), "own" (org A's objects) or "random"

    @property
    def endpoint(self) -> str:
        """The rule's endpoint name."""
        return self.rule.endpoint

    @property
    def is_api(self) -> bool:
        """Tell whether the rule is a data-API route."""
        return self.rule.rule.startswith("/api/")

    def __str__(self) -> str:
        """Method and URL, for failure messages."""
        return f"{self.method} {self.url}"


def _methods(rule: Rule) -> list[str]:
    """The methods a rule answers, HEAD and OPTIONS aside."""
    return sorted(rule.methods - {"HEAD", "OPTIONS"})


def _samples(rule: Rule, name: str, world: World, ids: str) -> list[str]:
    """Values for one URL parameter; a parameter nobody knows fails the walk loudly."""
    converter = rule._converters[name]
    if isinstance(converter, AnyConverter):
        return sorted(converter.items)
    if isinstance(converter, UUIDConverter):
        if ids == "random":
            return [str(uuid.uuid4())]
        if name not in world.ids:
            pytest.fail(f"the walk has no org A object for <{name}> of {rule.rule}: add one")
        return [world.ids[name]]
    if name in PLAIN_SAMPLES:
        return PLAIN_SAMPLES[name]
    pytest.fail(f"the walk has no sample value for <{name}> of {rule.rule}: add one")


def targets(world: World, *, methods: set[str] | None = None) -> list[Target]:
    """Every rule x method x URL (with own and random ids where the rule takes ids)."""
    out: list[Target] = []
    for rule in sorted(world.app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        has_ids = any(isinstance(rule._converters[a], UUIDConverter) for a in rule.arguments)
        for ids in ("own", "random") if has_ids else ("none",):
            names = sorted(rule.arguments)
            for combo in itertools.product(*(_samples(rule, n, world, ids) for n in names)):
                url = rule.build(dict(zip(names, combo, strict=True)))[1]
                for method in _methods(rule):
                    if methods is None or method in methods:
                        out.append(Target(rule, method, url, ids))
    return out


def gated_roles(app: Flask, endpoint: str) -> frozenset[str] | None:
    """The roles a view admits (``None`` for a view without a role gate)."""
    return getattr(app.view_functions[endpoint], "allowed_roles", None)


# --- sending requests ------------------------------------------------------------------------


def send(
    client: FlaskClient,
    target: Target,
    *,
    token: str | None = None,
    htmx: bool = False,
    bearer: str | None = None,
):
    """Send the target's request; state-changing ones carry a body fit for the route."""
    headers: dict[str, str] = {}
    if htmx:
        headers["HX-Request"] = "true"
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if target.method == "GET":
        # buffered: read the whole body, so a streamed answer (failures.csv) runs and closes
        # its context here rather than under the next request.
        return client.get(target.url, headers=headers, buffered=True)
    if target.is_api:
        body = {
            "title": "walk",
            "body": "walk",
            "author": "walk",
            "metadata": {},
            "messages": [{"author": "walk", "body": "walk"}],
        }
        response = client.open(target.url, method=target.method, json=body, headers=headers)
        if response.status_code == 415:  # a multipart route: send a file instead
            files = {"file": (BytesIO(b"walk"), "walk.txt", "text/plain")}
            response = client.open(target.url, method=target.method, data=files, headers=headers)
        return response
    data = {"csrf_token": token} if token else {}
    return client.open(target.url, method=target.method, data=data, headers=headers)


def session_token(client: FlaskClient) -> str:
    """The CSRF token of the client's session (read from a page every signed-in user sees)."""
    return csrf_token(client, "/logout")


# --- snapshots -------------------------------------------------------------------------------


def db_snapshot(app: Flask, *, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Every row of every table (as found in the database, so new tables count too)."""
    engine = app.extensions["db_engine"]
    tables = sorted(set(inspect(engine).get_table_names()) - set(skip))
    with engine.connect() as conn:
        return {
            table: sorted(
                repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))
            )
            for table in tables
        }


def last_event_id(app: Flask) -> int:
    """The id of the newest audit event (0 when there is none)."""
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        return conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM audit_events")).scalar_one()


def events_since(app: Flask, mark: int) -> list[str]:
    """The actions of the audit events recorded after ``mark``, oldest first."""
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action FROM audit_events WHERE id > :mark ORDER BY id"), {"mark": mark}
        )
        return [row[0] for row in rows]


def redis_snapshot(app: Flask) -> dict[str, bytes]:
    """Every Redis key (and its serialised value) that is not a rate-limit or RQ key."""
    conn = redis.Redis.from_url(app.config["REDIS_URL"])
    out = {}
    for key in conn.scan_iter():
        name = key.decode()
        if not name.startswith(VOLATILE_REDIS):
            out[name] = conn.dump(key)
    return out


def diff(before: dict, after: dict) -> list[str]:
    """Name what changed between two snapshots."""
    return [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
