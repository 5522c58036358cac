"""Security properties of EVERY route, found by walking ``app.url_map`` (new routes included).

- CSRF: every state-changing route outside the API refuses a missing or foreign token (400)
  and changes nothing; the API (bearer tokens, CSRF-exempt) refuses cookie sessions outright.
- No GET changes state: the database and Redis are unchanged after every role GETs every route.
- The role x route x organisation matrix, derived from each view's ``allowed_roles``.
- Security headers on every GET response; ``no-store`` where key state is shown.
- A spoofed ``X-Forwarded-For`` neither forges audit addresses nor escapes rate limits.
- A cookie copied before logout is refused afterwards.

There is no password-change feature (no page, no command), so "a password change invalidates
existing sessions" cannot be tested yet; logout's server-side invalidation is.
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
from portal.auth.gates import ALL_ROLES
from portal.chat.models import Attachment, Conversation, Message
from portal.chat.service import create_token
from portal.db import get_session
from portal.models import Organization, User
from portal.rotation import service as rotation
from tests.conftest import PASSWORD, csrf_token, login
from tests.rotation_helpers import b64, enable_byok, seed

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
        run = rotation.start_rotation(db, org, "cli", b64(key), b64(crypto.generate_key()))
        tokens = {"a": create_token(db, org_a, "walk-a"), "b": create_token(db, org_b, "walk-b")}
        db.commit()

        def first(model, org_id):
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
        return self.rule.endpoint

    @property
    def is_api(self) -> bool:
        return self.rule.rule.startswith("/api/")

    def __str__(self) -> str:
        return f"{self.method} {self.url}"


def _methods(rule: Rule) -> list[str]:
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
        body = {"title": "walk", "body": "walk", "author": "walk", "metadata": {}}
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
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        return conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM audit_events")).scalar_one()


def events_since(app: Flask, mark: int) -> list[str]:
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


# --- 1. CSRF on every state-changing route ---------------------------------------------------


def test_every_state_changing_route_refuses_a_missing_or_foreign_csrf_token(world):
    admin = world.client("admin_a")
    own_token = session_token(admin)
    foreign = session_token(world.client("auditor_a"))
    other_admin = world.app.test_client()  # a second session of the same admin
    assert login(other_admin, world.users["admin_a"]).status_code == 302
    foreign_same_user = session_token(other_admin)
    assert len({own_token, foreign, foreign_same_user}) == 3
    walked = [
        t for t in targets(world, methods=STATE_CHANGING) if not t.is_api and t.ids != "random"
    ]
    assert {t.endpoint for t in walked} >= {"compliance.enable", "rotation.control", "auth.logout"}
    before, mark = db_snapshot(world.app), last_event_id(world.app)
    redis_before = redis_snapshot(world.app)
    problems = []
    for target in walked:
        attempts = {
            "no token": {},
            "other user's token (form)": {"data": {"csrf_token": foreign}},
            "own other session's token (form)": {"data": {"csrf_token": foreign_same_user}},
            "other session's token (header)": {"headers": {"X-CSRFToken": foreign_same_user}},
            "garbage token (header, htmx)": {
                "headers": {"X-CSRFToken": "x" * 40, "HX-Request": "true"}
            },
        }
        for name, kwargs in attempts.items():
            response = admin.open(target.url, method=target.method, **kwargs)
            if response.status_code != 400:
                problems.append(f"{target} with {name}: {response.status_code}")
    assert not problems, "\n".join(problems)
    assert diff(before, db_snapshot(world.app)) == []
    assert events_since(world.app, mark) == []
    assert diff(redis_before, redis_snapshot(world.app)) == []
    # The same requests with the session's own token get past CSRF (so the 400s above were it).
    for target in walked:
        response = admin.open(target.url, method=target.method, data={"csrf_token": own_token})
        assert response.status_code != 400, f"{target} with its own token: 400"
        if target.endpoint == "auth.logout":  # signed out now: sign in again for the rest
            assert login(admin, world.users["admin_a"]).status_code == 302
            own_token = session_token(admin)


def test_a_cookie_session_cannot_use_the_api_at_all(world):
    admin = world.client("admin_a")
    token = session_token(admin)
    before, mark = db_snapshot(world.app), last_event_id(world.app)
    problems = []
    for target in targets(world):
        if not target.is_api or target.endpoint in PUBLIC:
            continue
        for headers in ({}, {"X-CSRFToken": token}, {"X-CSRFToken": token, "HX-Request": "true"}):
            if target.method == "GET":
                response = admin.get(target.url, headers=headers)
            else:
                response = admin.open(
                    target.url,
                    method=target.method,
                    json={"title": "t", "body": "b", "author": "a"},
                    headers=headers,
                )
            if response.status_code != 401 or response.get_json()["error"] != "unauthorized":
                problems.append(f"{target} {headers}: {response.status_code}")
    assert not problems, "\n".join(problems)
    assert diff(before, db_snapshot(world.app)) == []
    assert events_since(world.app, mark) == []
    # ...while the organisation's bearer token does work (the 401s above were the cookie's).
    bearer = {"Authorization": f"Bearer {world.tokens['a']}"}
    assert world.app.test_client().get("/api/v1/conversations", headers=bearer).status_code == 200


# --- 2. No GET changes state -----------------------------------------------------------------

# Events a GET may write: sign-in bookkeeping (access denied), and the export's own record
# ("audited first": an export is a disclosure and is logged by design, not a state change).
GET_EVENTS = {"audit.export_events": {"audit.exported"}}


@pytest.mark.parametrize("who", WHO)
def test_no_get_changes_state(world, who):
    client = world.client(who)
    walked = targets(world, methods={"GET"})
    skip = ("audit_events", "audit_heads")  # compared below: the head moves with each event
    before, mark = db_snapshot(world.app, skip=skip), last_event_id(world.app)
    redis_before = redis_snapshot(world.app)
    problems = []
    for target in walked:
        event_mark = last_event_id(world.app)
        for htmx in (False, True):
            bearer = world.tokens[who[-1]] if target.is_api and who.endswith(("_a", "_b")) else None
            response = send(client, target, htmx=htmx, bearer=bearer)
            if response.status_code >= 500:
                problems.append(f"{target} (htmx={htmx}): {response.status_code}")
        allowed = GET_EVENTS.get(target.endpoint, set())
        for action in events_since(world.app, event_mark):
            if not (action.startswith("auth.") or action in allowed):
                problems.append(f"{target} wrote the audit event {action}")
        changed = diff(before, db_snapshot(world.app, skip=skip))
        if changed:
            problems.append(f"{target} changed tables {changed}")
            before = db_snapshot(world.app, skip=skip)
        redis_changed = diff(redis_before, redis_snapshot(world.app))
        if redis_changed:
            problems.append(f"{target} changed Redis keys {redis_changed}")
            redis_before = redis_snapshot(world.app)
    assert not problems, "\n".join(problems)
    if who == "member_a":  # a sanity check of the event check: denials were recorded
        assert "auth.access_denied" in events_since(world.app, mark)


# --- 3. The role x route x organisation matrix -----------------------------------------------


def test_every_route_outside_the_api_is_public_or_gated(app):
    ungated, stale = [], PUBLIC - set(app.view_functions)
    for rule in app.url_map.iter_rules():
        roles = gated_roles(app, rule.endpoint)
        if rule.endpoint in PUBLIC or rule.rule.startswith("/api/"):
            assert roles is None, f"{rule.rule}: public or API, yet role-gated"
            continue
        if not roles:
            ungated.append(f"{rule.rule} ({rule.endpoint})")
        else:
            assert roles <= ALL_ROLES, rule.rule
    assert not ungated, "routes without require_role: " + ", ".join(ungated)
    assert not stale, f"PUBLIC names endpoints that no longer exist: {stale}"


def expected_status(world: World, target: Target, who: str) -> set[int] | None:
    """Statuses the matrix allows, derived from the route's ``allowed_roles``.

    ``None`` means "allowed in": anything but 400/401/403/404 and 5xx.
    """
    if target.endpoint in PUBLIC:
        if target.endpoint == "auth.login" and target.method == "GET" and who != "signed_out":
            return {302}  # signed-in users are sent on to the home page
        return {200} if target.method == "GET" else None
    if target.is_api:
        return {401}  # no cookie session, whoever it belongs to, opens the API
    roles = gated_roles(world.app, target.endpoint)
    assert roles, f"{target.rule.rule} is not gated"
    if who == "signed_out":
        return {302}
    role, org = (who.split("_") + [""])[:2]
    if role not in roles:
        return {403}
    if target.ids == "random":
        return {404}
    if target.ids == "own" and org == "b":
        return {404}  # another organisation's object is indistinguishable from none
    if target.method == "GET":
        return {200}
    return None


@pytest.mark.parametrize("who", WHO)
def test_role_route_organisation_matrix(world, who):
    client = world.client(who)
    token = session_token(client) if who != "signed_out" else csrf_token(client)
    problems = []
    walked = targets(world)
    # GETs first: the POSTs an admin may make change the world (e.g. cancel the run).
    walked.sort(key=lambda t: t.method != "GET")
    for target in walked:
        expected = expected_status(world, target, who)
        response = send(client, target, token=token)
        status = response.status_code
        ok = status in expected if expected else status not in {400, 401, 403, 404} and status < 500
        if not ok:
            problems.append(f"{who}: {target} -> {status}, expected {expected or 'allowed'}")
        location = response.headers.get("Location", "")
        if expected == {302} and who == "signed_out" and not location.startswith("/login"):
            problems.append(f"{who}: {target} redirects to {location}")
        if target.endpoint == "auth.logout" and target.method == "POST":
            # Logout empties the session (and its CSRF secret): start a fresh one.
            if who != "signed_out":
                assert login(client, world.users[who]).status_code == 302
            token = session_token(client) if who != "signed_out" else csrf_token(client)
    assert not problems, "\n".join(problems)


def test_signed_out_htmx_requests_get_hx_redirect_on_every_gated_route(world):
    client = world.client("signed_out")
    token = csrf_token(client)
    problems = []
    for target in targets(world):
        if target.endpoint in PUBLIC or target.is_api:
            continue
        response = send(client, target, token=token, htmx=True)
        if response.status_code != 401 or not response.headers.get("HX-Redirect", "").startswith(
            "/login"
        ):
            problems.append(f"{target}: {response.status_code} {dict(response.headers)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("org", ["a", "b"])
def test_api_matrix_with_bearer_tokens(world, org):
    """A token opens its own organisation's objects only; another's are 404, like none."""
    client = world.app.test_client()
    problems = []

    def deletes_last(t: Target) -> tuple[bool, bool]:
        """Deletes go last, the conversation's after its message's and attachment's, so each
        finds the object it names (a conversation's delete takes its contents along)."""
        return t.method == "DELETE", "conv_id" in t.rule.arguments

    for target in sorted(targets(world), key=deletes_last):
        if not target.is_api or target.endpoint in PUBLIC:
            continue
        anonymous = send(client, target)
        if anonymous.status_code != 401:
            problems.append(f"no token: {target} -> {anonymous.status_code}")
        response = send(client, target, bearer=world.tokens[org])
        status = response.status_code
        if target.ids == "random" or (target.ids == "own" and org == "b"):
            ok = status == 404
        else:
            ok = status not in {400, 401, 403, 404, 415} and status < 500
        if not ok:
            problems.append(f"token {org}: {target} -> {status} {response.get_data(as_text=True)}")
    assert not problems, "\n".join(problems)


# --- 4. Headers on every GET response --------------------------------------------------------


def header_problems(target: Target, response, who: str) -> list[str]:
    """What is wrong with one response's security headers."""
    problems = []
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    directives = {d.split()[0]: d for d in (p.strip() for p in csp.split(";")) if d}
    if "unsafe-inline" in csp or "unsafe-eval" in csp:
        problems.append("CSP allows unsafe-inline/unsafe-eval")
    if directives.get("frame-ancestors") != "frame-ancestors 'none'":
        problems.append(f"CSP frame-ancestors is {directives.get('frame-ancestors')!r}")
    if directives.get("script-src", "script-src 'self'").split()[1:] != ["'self'"]:
        problems.append(f"CSP script-src is {directives.get('script-src')!r}")
    if "default-src" not in directives or "object-src" not in directives:
        problems.append("CSP lacks default-src or object-src")
    if headers.get("X-Content-Type-Options") != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    policy = headers.get("Referrer-Policy")
    if policy not in {
        "same-origin",
        "no-referrer",
        "strict-origin",
        "strict-origin-when-cross-origin",
    }:
        problems.append(f"Referrer-Policy is {policy!r}")
    vary = {v.strip().lower() for v in headers.get("Vary", "").split(",")}
    if "cookie" not in vary:
        problems.append(f"Vary is {headers.get('Vary')!r}")
    if target.url.startswith(NO_STORE_PREFIXES) and "no-store" not in headers.get(
        "Cache-Control", ""
    ):
        problems.append(f"Cache-Control is {headers.get('Cache-Control')!r}, not no-store")
    return [f"{who}: {target} ({response.status_code}): {p}" for p in problems]


@pytest.mark.parametrize("who", ["signed_out", "admin_a", "member_a", "support", "admin_b"])
def test_security_headers_on_every_get_response(world, who):
    client = world.client(who)
    problems = []
    for target in targets(world, methods={"GET"}):
        for htmx in (False, True):
            response = send(client, target, htmx=htmx)
            problems += header_problems(target, response, who)
            if response.status_code == 200 and target.endpoint not in PUBLIC:
                vary = response.headers.get("Vary", "").lower()
                if "hx-request" not in vary:
                    problems.append(f"{who}: {target}: Vary lacks HX-Request")
    assert not problems, "\n".join(problems)


# --- 5. Spoofed X-Forwarded-For --------------------------------------------------------------


def failed_login_ip(app: Flask, client: FlaskClient, email: str, **kwargs) -> str | None:
    """Fail a sign-in and return the source address its audit event recorded."""
    token = csrf_token(client)
    mark = last_event_id(app)
    response = client.post(
        "/login", data={"email": email, "password": "wrong", "csrf_token": token}, **kwargs
    )
    assert response.status_code == 401
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, source_ip FROM audit_events WHERE id > :m"), {"m": mark}
        ).all()
    # One event in the platform chain, one in the organisation's chain, from one address.
    assert [r[0] for r in rows] == ["auth.login_failed", "auth.login_failed"]
    assert rows[0][1] == rows[1][1]
    return rows[0][1]


@pytest.fixture
def orgs_for_proxy(app_config, request):
    """The app behind one trusted proxy (set before the app is built), with its users."""
    app_config["TRUSTED_PROXY_COUNT"] = 1
    app = request.getfixturevalue("app")
    orgs = request.getfixturevalue("orgs")
    return app, orgs["users"]


def test_without_trusted_proxies_a_spoofed_forwarded_for_is_ignored(app, orgs):
    assert app.config["TRUSTED_PROXY_COUNT"] == 0
    client = app.test_client()
    ip = failed_login_ip(
        app,
        client,
        orgs["users"]["admin_a"],
        headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"},
        environ_base={"REMOTE_ADDR": "192.0.2.10"},
    )
    assert ip == "192.0.2.10"


def test_behind_one_proxy_only_the_last_hop_is_trusted(orgs_for_proxy):
    app, users = orgs_for_proxy
    client = app.test_client()
    ip = failed_login_ip(
        app,
        client,
        users["admin_a"],
        headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.7"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert ip == "10.0.0.7"


def _attempts(app: Flask, forwarded: list[str], remote: str = "127.0.0.1") -> list[int]:
    """Failed sign-ins, one per X-Forwarded-For value, each for a different account."""
    statuses = []
    for i, xff in enumerate(forwarded):
        client = app.test_client()
        token = csrf_token(client)
        statuses.append(
            client.post(
                "/login",
                data={"email": f"nobody{i}@x.example", "password": "x", "csrf_token": token},
                headers={"X-Forwarded-For": xff},
                environ_base={"REMOTE_ADDR": remote},
            ).status_code
        )
    return statuses


def test_spoofing_forwarded_for_does_not_escape_the_per_address_limit(app):
    app.config["RATELIMIT_LOGIN_ADDRESS"] = "3/minute"
    spoofed = [f"6.6.6.{i}" for i in range(5)]
    assert _attempts(app, spoofed, remote="192.0.2.10") == [401, 401, 401, 429, 429]
    # Another real address still has its own allowance.
    assert _attempts(app, ["6.6.6.99"], remote="192.0.2.11") == [401]


def test_behind_a_proxy_the_limit_counts_per_trusted_address(orgs_for_proxy):
    app, _ = orgs_for_proxy
    app.config["RATELIMIT_LOGIN_ADDRESS"] = "3/minute"
    # The client forges the first entries; the proxy's own (last) entry is what counts.
    forged = [f"6.6.6.{i}, 10.0.0.7" for i in range(5)]
    assert _attempts(app, forged) == [401, 401, 401, 429, 429]
    # Different real clients behind the same proxy are counted separately.
    assert _attempts(app, [f"10.0.0.{i}" for i in range(20, 24)]) == [401] * 4


# --- 6. Replayed cookies ---------------------------------------------------------------------


def _session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _replay(app: Flask, cookie: str, path: str = "/settings/compliance"):
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    return thief.get(path)


def test_a_cookie_copied_before_logout_is_refused_afterwards(app, login_as):
    client = login_as("admin_a")
    copied = _session_cookie(client)
    assert _replay(app, copied).status_code == 200  # the copy works while the session lives
    token = session_token(client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    replayed = _replay(app, copied)
    assert replayed.status_code == 302 and replayed.headers["Location"].startswith("/login")
    # htmx and the API get no further with it.
    thief = app.test_client()
    thief.set_cookie("session", copied)
    assert thief.get("/rotations", headers={"HX-Request": "true"}).status_code == 401
    assert thief.get("/api/v1/conversations").status_code == 401


def test_logout_ends_every_other_session_of_the_user(app, login_as, orgs):
    client = login_as("admin_a")
    elsewhere = app.test_client()
    assert login(elsewhere, orgs["users"]["admin_a"], PASSWORD).status_code == 302
    assert elsewhere.get("/settings/compliance").status_code == 200
    assert client.post("/logout", data={"csrf_token": session_token(client)}).status_code == 302
    assert elsewhere.get("/settings/compliance").status_code == 302


def test_a_replayed_cookie_cannot_post_either(app, login_as):
    client = login_as("admin_a")
    token = session_token(client)
    copied = _session_cookie(client)  # with the CSRF secret: only the sign-in may stop it
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", copied)
    mark = last_event_id(app)
    response = thief.post(
        "/settings/compliance/byok/generate", data={"csrf_token": token}, headers={}
    )
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert events_since(app, mark) == []
