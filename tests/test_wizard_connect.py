"""The wizard's "Connect a key in your key service" and the page parts of a key held there.

Against the real key services (OpenBao Transit; SoftHSM2 and moto's KMS where cheap): the
provider list, Test showing the key version or the service's refusal, Save & Enable needing
Test and re-authentication, the status panel's custody and key service state (reachable,
then denied after a revocation, then back), Re-wrap from the page, CSRF, who may see and do
what, and that no page ever holds the data key.
"""

from __future__ import annotations

import time

import pytest
from flask import Flask
from sqlalchemy import select

from portal import crypto
from portal.audit.actions import Action
from portal.db import get_session
from portal.keys import external
from portal.keys.models import OrgKey
from portal.keys.wrapped import unwrap_row
from tests.support.api import Api
from tests.support.html import by_testid, feedback, parse_html
from tests.support.keyservices import pointed_at
from tests.support.rotation import b64, key_ids, run_worker
from tests.support.web import PASSWORD, login
from tests.support.wizard import PAGE, REAUTH_MESSAGE, Wizard, events, sign_in

CACHE = 1
# A PKCS#11 module that is configured but cannot start: the page shows why.
BROKEN = {
    "PKCS11_MODULE": "/nonexistent/libsofthsm2.so",
    "PKCS11_TOKEN_LABEL": "byok",
    "PKCS11_PIN": "1234",
}
ROUTES = [
    "byok/connect/test",
    "byok/connect",
    "rotate/rewrap",
    "rotate/reencrypt/test",
    "rotate/reencrypt",
    "rotate/reencrypt-sealed/test",
    "rotate/reencrypt-sealed",
]
REF_LABELS = {
    "vault-transit": "Transit key name",
    "pkcs11": "PKCS#11 key label",
    "aws-kms": "KMS key ARN",
}


@pytest.fixture(autouse=True, params=["vault_service"])
def service(request: pytest.FixtureRequest, app_config: dict):
    """A real key service with the portal pointed at it (None: none is running)."""
    if request.param in (None, "broken"):
        app_config.update(BROKEN if request.param else {})
        return None
    running = pointed_at(
        request, app_config, request.param, KMS_CACHE_SECONDS=CACHE, KMS_BREAKER_SECONDS=1
    )
    return running


def post(wizard: Wizard, route: str, data: dict, htmx: bool = True, csrf: bool = True):
    """POST a step of this area as htmx (CSRF header) or as a plain form (CSRF field)."""
    data = dict(data)
    headers = {"HX-Request": "true"} if htmx else {}
    if csrf and htmx:
        headers["X-CSRFToken"] = wizard.token
    elif csrf:
        data["csrf_token"] = wizard.token
    return wizard.client.post(f"{PAGE}/{route}", data=data, headers=headers)


def fields(service, ref: str) -> dict:
    """The connect form's fields for a key reference of the service."""
    return {"provider": service.provider, "key_ref": ref, "role_arn": ""}


def hidden(html: str, field_id: str) -> str:
    """The value of a hidden input."""
    node = parse_html(html).find(id=field_id)
    assert node is not None, f"no #{field_id} in:\n{html}"
    return node.attrs.get("value", "")


def press_test(wizard: Wizard, service, ref: str, form: str = "connect") -> str:
    """Press Test; return the marker the answer put into the form's hidden field."""
    route = "byok/connect/test" if form == "connect" else f"rotate/{form}/test"
    response = post(wizard, route, fields(service, ref))
    assert response.status_code == 200, response.get_data(as_text=True)
    return hidden(response.get_data(as_text=True), f"{form}-tested")


def connect(wizard: Wizard, service, ref: str) -> str:
    """Test, then Save & Enable a key reference; return the page afterwards."""
    marker = press_test(wizard, service, ref)
    data = {**fields(service, ref), "tested": marker, "password": PASSWORD}
    response = post(wizard, "byok/connect", data)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert by_testid(response.get_data(as_text=True), "byok-state") == "On"
    return wizard.page()


def external_rows(app: Flask) -> list[OrgKey]:
    """Every stored key row wrapped by a key service (detached)."""
    with app.app_context():
        db = get_session()
        found = list(db.scalars(select(OrgKey).where(OrgKey.origin == "external")))
        db.expunge_all()
        return found


def wait_for(check, seconds: float) -> None:
    """Poll check() until it is true, or fail after seconds."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        time.sleep(0.1)


# --- the provider list and Test ----------------------------------------------------------


@pytest.mark.parametrize(
    "service", ["vault_service", "pkcs11_service", "kms_service"], indirect=True
)
def test_the_started_key_service_is_offered_and_test_shows_its_key_version(app, admin, service):
    html = admin.page()
    provider = parse_html(html).find(id="connect-provider")
    assert [n.attrs["value"] for n in provider.walk() if n.tag == "option"] == [service.provider]
    label = parse_html(html).find(**{"for": "connect-key_ref"}).text()
    assert label == REF_LABELS[service.provider]
    ref = service.new_key()
    response = post(admin, "byok/connect/test", fields(service, ref))
    answer = response.get_data(as_text=True)
    assert response.status_code == 200, answer
    assert feedback(answer, "connect", "key_ref").startswith("Test passed")
    assert by_testid(answer, "key-version")
    assert hidden(answer, "connect-tested") == external.tested_marker(service.provider, ref, None)
    assert [e.outcome for e in events(app, Action.KEY_SERVICE_TEST.value)] == ["success"]
    assert external_rows(app) == []


@pytest.mark.parametrize("service", ["kms_service"], indirect=True)
def test_aws_kms_offers_a_role_assumed_with_the_organisation_id_as_external_id(
    app, admin, orgs, service
):
    html = admin.page()
    assert parse_html(html).find(id="connect-role_arn") is not None
    assert by_testid(html, "external-id") == str(orgs["a"]["id"])


@pytest.mark.parametrize("service", [None], indirect=True)
def test_without_a_key_service_the_page_says_how_an_operator_configures_one(app, admin):
    html = admin.page()
    assert parse_html(html).find(id="connect-form") is None
    assert "VAULT_ADDR" in by_testid(html, "no-key-service")


@pytest.mark.parametrize("service", ["broken"], indirect=True)
def test_a_configured_service_that_did_not_start_shows_its_problem(app, admin):
    html = admin.page()
    assert parse_html(html).find(id="connect-form") is None
    assert "PKCS11_MODULE /nonexistent/libsofthsm2.so is not a file" in by_testid(
        html, "key-service-problem"
    )


def test_a_wrong_key_reference_is_refused_at_test_with_the_services_message(app, admin, service):
    wrong = service.new_key() + "-missing"
    response = post(admin, "byok/connect/test", fields(service, wrong))
    assert response.status_code == 422
    answer = response.get_data(as_text=True)
    assert f"The key service refused access to {wrong}" in feedback(answer, "connect", "key_ref")
    assert hidden(answer, "connect-tested") == ""
    failed = events(app, Action.KEY_SERVICE_TEST.value)
    assert [e.outcome for e in failed] == ["failure"]
    assert external_rows(app) == []


def test_test_works_as_a_plain_form_without_javascript(app, admin, service):
    ref = service.new_key()
    response = post(admin, "byok/connect/test", fields(service, ref), htmx=False)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Test passed" in feedback(page, "connect", "key_ref")
    assert hidden(page, "connect-tested") == external.tested_marker(service.provider, ref, None)
    assert parse_html(page).find(id="connect-key_ref").attrs["value"] == ref
    data = {**fields(service, ref), "tested": hidden(page, "connect-tested"), "password": PASSWORD}
    enabled = post(admin, "byok/connect", data, htmx=False)
    assert enabled.status_code == 303
    assert by_testid(admin.page(), "custody-key-ref") == ref


# --- Save & Enable ----------------------------------------------------------------------


def test_save_and_enable_without_test_is_refused_and_stores_nothing(app, admin, service):
    ref = service.new_key()
    data = {**fields(service, ref), "tested": "", "password": PASSWORD}
    response = post(admin, "byok/connect", data)
    assert response.status_code == 422
    assert "Test this key first" in feedback(response.get_data(as_text=True), "connect", "key_ref")
    # A marker of another reference is no test of this one.
    other = {**data, "tested": external.tested_marker(service.provider, ref + "-x", None)}
    assert post(admin, "byok/connect", other).status_code == 422
    assert external_rows(app) == []
    assert events(app, Action.BYOK_ENABLED.value, outcome="success") == []


def test_save_and_enable_needs_re_authentication_and_keeps_the_test(app, admin, service):
    ref = service.new_key()
    marker = press_test(admin, service, ref)
    admin.stale_reauth()
    response = post(admin, "byok/connect", {**fields(service, ref), "tested": marker})
    assert response.status_code == 422
    answer = response.get_data(as_text=True)
    assert feedback(answer, "connect", "password") == REAUTH_MESSAGE
    # A missing password does not make the admin press Test again.
    assert hidden(answer, "connect-tested") == marker
    assert external_rows(app) == []
    data = {**fields(service, ref), "tested": marker, "password": PASSWORD}
    assert post(admin, "byok/connect", data).status_code == 200
    assert [r.key_ref for r in external_rows(app)] == [ref]


def test_enabled_status_shows_custody_and_reachable_then_denied_then_back(
    app, admin, orgs, service
):
    ref = service.new_key()
    html = connect(admin, service, ref)
    (row,) = external_rows(app)
    assert by_testid(html, "custody").endswith(f": {ref}")
    assert by_testid(html, "key-service-state") == "reachable"
    assert by_testid(html, "key-service-version")
    assert "UTC" in by_testid(html, "key-service-last-success")
    cells = parse_html(html).find(data_fingerprint=row.fingerprint)
    assert "active" in cells.text()
    custody = [n for n in cells.walk() if n.attrs.get("data-testid") == "key-custody"]
    assert custody and custody[0].text() == service.provider
    # The kill switch is in the customer's key service: no portal revoke or backup restore.
    assert ref in by_testid(html, "external-kill-switch")
    assert parse_html(html).find(id="revoke-form") is None
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "kept")
    assert "UTC" in by_testid(admin.page(), "key-service-cache")

    service.revoke(ref)
    try:
        denied = admin.page()
        assert by_testid(denied, "key-service-state").startswith("access denied")
        warning = by_testid(denied, "key-service-warning")
        assert "Reads and writes stop" in warning or "have stopped" in warning
        assert "comes back by itself" in warning
        time.sleep(CACHE + 0.2)
        assert api.bodies(conv) == [{"status": "unavailable", "reason": "key_access_revoked"}]
        after = admin.page()
        assert "have stopped" in by_testid(after, "key-service-warning")
        assert by_testid(after, "key-reason") == "access revoked"
        # No backup to paste: access comes back from the key service, not from Restore.
        assert parse_html(after).find(id="restore-form") is None
    finally:
        service.restore(ref)
    wait_for(lambda: api.bodies(conv) == ["kept"], 5)
    assert by_testid(admin.page(), "key-service-state") == "reachable"


def test_rewrap_from_the_page_after_rotating_in_the_service_and_to_another_key(
    app, admin, orgs, service
):
    ref = service.new_key()
    before = by_testid(connect(admin, service, ref), "key-service-version")
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "kept")
    service.rotate(ref)
    admin.stale_reauth()
    stale = post(admin, "rotate/rewrap", {"key_ref": ""})
    assert stale.status_code == 422
    response = post(admin, "rotate/rewrap", {"key_ref": "", "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "Re-wrapped: 1 data key" in response.get_data(as_text=True)
    assert by_testid(admin.page(), "key-service-version") != before
    other = service.new_key()
    response = post(admin, "rotate/rewrap", {"key_ref": other, "password": PASSWORD})
    assert response.status_code == 200
    assert by_testid(admin.page(), "custody-key-ref") == other
    assert [r.key_ref for r in external_rows(app)] == [other]
    assert api.bodies(conv) == ["kept"]
    assert len(events(app, Action.KEY_REWRAPPED.value, outcome="success")) == 2


def test_no_page_or_answer_holds_the_data_key(app, admin, orgs, service, leaks):
    ref = service.new_key()
    answers = [connect(admin, service, ref)]
    api = Api.for_org(app, orgs["a"]["id"])
    api.message(api.conversation("hello"), "kept")
    answers.append(admin.page())
    answers.append(post(admin, "rotate/rewrap", {"password": PASSWORD}).get_data(as_text=True))
    answers.append(admin.client.get(f"{PAGE}/byok").get_data(as_text=True))
    (row,) = external_rows(app)
    with app.app_context():
        data_key = unwrap_row(get_session().get(OrgKey, row.id))
    assert leaks.text([data_key], *answers) == []
    assert leaks.database([data_key]) == []
    assert leaks.redis([data_key]) == []


# --- CSRF and who may do what --------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_every_new_step_refuses_a_missing_csrf_token(app, admin, service, route):
    ref = service.new_key()
    data = {**fields(service, ref), "password": PASSWORD}
    assert post(admin, route, data, csrf=False).status_code == 400
    assert post(admin, route, data, htmx=False, csrf=False).status_code == 400
    assert external_rows(app) == []
    assert events(app, Action.KEY_SERVICE_TEST.value) == []


@pytest.mark.parametrize("who", ["auditor_a", "member_a"])
def test_auditors_and_members_cannot_connect_test_or_rewrap(app, orgs, service, who):
    ref = service.new_key()
    client = app.test_client()
    assert login(client, orgs["users"][who]).status_code == 302
    wizard = Wizard(app, client, token_path="/")  # a member may not open the page itself
    for route in ROUTES:
        data = {**fields(service, ref), "password": PASSWORD}
        assert post(wizard, route, data).status_code == 403, route
    assert external_rows(app) == []
    assert events(app, Action.KEY_SERVICE_TEST.value) == []


def test_the_auditor_reads_the_custody_and_another_org_sees_none_of_it(app, admin, orgs, service):
    ref = service.new_key()
    connect(admin, service, ref)
    auditor = sign_in(app, orgs["users"]["auditor_a"]).page()
    assert by_testid(auditor, "custody-key-ref") == ref
    assert parse_html(auditor).find(id="connect-form") is None
    assert parse_html(auditor).find(id="rewrap-form") is None
    other = sign_in(app, orgs["users"]["admin_b"]).page()
    assert ref not in other
    assert parse_html(other).find(data_testid="custody") is None
    assert by_testid(other, "byok-state") == "Off"


# --- Full re-encryption ------------------------------------------------------------------


def run_page(response) -> str:
    """The run page a started full re-encryption sends the browser to (htmx's redirect)."""
    assert response.status_code == 200, response.get_data(as_text=True)
    location = response.headers["HX-Redirect"]
    assert location.startswith("/rotations/"), location
    return location


def test_full_reencryption_from_a_sealed_key_to_the_key_service(
    app, admin, orgs, service, enable_byok
):
    current = enable_byok(orgs["a"]["id"])
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "kept")
    html = admin.page()
    assert by_testid(html, "custody") == "Sealed by this installation's master key"
    assert parse_html(html).find(id="rotate-form") is not None  # beside the usual Rotate
    ref = service.new_key()
    data = {**fields(service, ref), "current_key": b64(current), "password": PASSWORD}
    untested = post(admin, "rotate/reencrypt", data)
    assert untested.status_code == 422
    said = feedback(untested.get_data(as_text=True), "reencrypt", "key_ref")
    assert "Test this key first" in said
    data["tested"] = press_test(admin, service, ref, form="reencrypt")
    run_page(post(admin, "rotate/reencrypt", data))
    run_worker(app)
    (row,) = external_rows(app)
    assert key_ids(app, orgs["a"]["id"]) == {row.key_id}
    assert api.bodies(conv) == ["kept"]
    assert by_testid(admin.page(), "custody-key-ref") == ref


def test_full_reencryption_to_another_key_service_key_then_back_to_a_sealed_key(
    app, admin, orgs, service
):
    connect(admin, service, service.new_key())
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("hello")
    api.message(conv, "kept")
    html = admin.page()
    assert by_testid(html, "rotation-kinds").startswith("Re-wrap when you rotated")
    found = {f: parse_html(html).find(id=f) for f in ("rewrap-form", "rotate-form")}
    assert found["rewrap-form"] is not None and found["rotate-form"] is None
    other = service.new_key()
    marker = press_test(admin, service, other, form="reencrypt")
    data = {**fields(service, other), "tested": marker, "password": PASSWORD}
    run_page(post(admin, "rotate/reencrypt", data))
    run_worker(app)
    assert by_testid(admin.page(), "custody-key-ref") == other
    assert api.bodies(conv) == ["kept"]

    key = crypto.generate_key()
    tested = post(admin, "rotate/reencrypt-sealed/test", {"new_key": b64(key)})
    assert tested.status_code == 200, tested.get_data(as_text=True)
    fp = hidden(tested.get_data(as_text=True), "reencrypt_sealed-tested")
    assert fp == crypto.fingerprint(crypto.key_id(key))
    data = {"new_key": b64(key), "tested_fingerprint": fp, "password": PASSWORD}
    run_page(post(admin, "rotate/reencrypt-sealed", data))
    run_worker(app)
    assert by_testid(admin.page(), "custody") == "Sealed by this installation's master key"
    assert key_ids(app, orgs["a"]["id"]) == {crypto.key_id(key).hex()}
    assert api.bodies(conv) == ["kept"]
