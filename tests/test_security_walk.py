"""Security properties of EVERY route, found by walking ``app.url_map`` (new routes included).

- CSRF: every state-changing route outside the API refuses a missing or foreign token (400)
  and changes nothing; the API (bearer tokens, CSRF-exempt) refuses cookie sessions outright.
- No GET changes state: the database and Redis are unchanged after every role GETs every route.
- The role x route x organisation matrix, derived from each view's ``allowed_roles``.

Headers, forwarded addresses and sessions: tests/test_security_headers_and_sessions.py; the
walk itself and its world: tests/support/walk.py.
"""

from __future__ import annotations

import pytest

from portal.auth.gates import ALL_ROLES
from tests.support.walk import (
    PUBLIC,
    STATE_CHANGING,
    WHO,
    Target,
    World,
    db_snapshot,
    diff,
    events_since,
    gated_roles,
    last_event_id,
    redis_snapshot,
    send,
    session_token,
    targets,
)
from tests.support.web import csrf_token, login

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
