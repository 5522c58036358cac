"""Sign-in, sign-out, sessions and CSRF."""

from __future__ import annotations

from tests.support.web import PASSWORD, csrf_token, login


def test_login_page_has_email_and_password_fields(client):
    html = client.get("/login").get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html


def test_login_success_lands_on_next_page(client, orgs):
    token = csrf_token(client)
    response = client.post(
        "/login?next=/settings/compliance",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/settings/compliance"
    assert client.get("/settings/compliance").status_code == 200


def test_login_refuses_offsite_next(client, orgs):
    token = csrf_token(client)
    response = client.post(
        "/login?next=https://evil.example/",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/"


def test_wrong_password_and_unknown_email_get_the_same_generic_message(client, orgs):
    wrong = login(client, orgs["users"]["admin_a"], "not the password")
    unknown = login(client, "nobody@nowhere.example", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    text_wrong, text_unknown = wrong.get_data(as_text=True), unknown.get_data(as_text=True)
    assert "Email or password is not correct." in text_wrong
    assert "Email or password is not correct." in text_unknown
    assert client.get("/settings/compliance").status_code == 302


def test_session_cookie_is_httponly_and_samesite_lax(client, orgs):
    response = login(client, orgs["users"]["admin_a"])
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_over_https(client, orgs):
    token = csrf_token(client)
    response = client.post(
        "/login",
        base_url="https://localhost",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
    )
    assert "Secure" in response.headers["Set-Cookie"]


def test_session_is_regenerated_at_login(client, orgs):
    client.get("/login")
    with client.session_transaction() as sess:
        sess["planted"] = "by an attacker"
    login(client, orgs["users"]["admin_a"])
    with client.session_transaction() as sess:
        assert "planted" not in sess
        assert "_user_id" in sess


def test_logout_signs_out_and_invalidates_a_copied_cookie(app, client, orgs):
    login(client, orgs["users"]["admin_a"])
    copied = app.test_client()
    with client.session_transaction() as sess:
        stolen = dict(sess)
    with copied.session_transaction() as sess:
        sess.update(stolen)
    assert copied.get("/settings/compliance").status_code == 200
    token = csrf_token(client, "/")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/settings/compliance").status_code == 302
    assert copied.get("/settings/compliance").status_code == 302


def test_logout_get_changes_nothing(client, orgs):
    login(client, orgs["users"]["admin_a"])
    assert client.get("/logout").status_code == 200
    assert client.get("/settings/compliance").status_code == 200


def test_post_without_csrf_token_is_refused(client, orgs):
    response = client.post("/login", data={"email": orgs["users"]["admin_a"], "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/settings/compliance").status_code == 302


def test_htmx_post_with_token_in_header_is_accepted(client, orgs):
    login(client, orgs["users"]["admin_a"])
    token = csrf_token(client, "/")
    response = client.post("/logout", headers={"HX-Request": "true", "X-CSRFToken": token})
    assert response.status_code == 302


def test_htmx_post_without_token_is_refused(client, orgs):
    login(client, orgs["users"]["admin_a"])
    response = client.post("/logout", headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert client.get("/settings/compliance").status_code == 200


def test_csrf_token_of_another_session_is_refused(app, client, orgs):
    other = app.test_client()
    foreign = csrf_token(other)
    response = client.post(
        "/login",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": foreign},
    )
    assert response.status_code == 400


def test_login_and_failures_are_audited(app, client, orgs):
    from sqlalchemy import select

    from portal.audit.models import AuditEvent
    from portal.db import get_session

    login(client, orgs["users"]["admin_a"], "wrong password!")
    login(client, orgs["users"]["admin_a"])
    with app.app_context():
        actions = [
            e.action for e in get_session().scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    # The failure is in the platform chain and in the organisation's own chain.
    assert actions == ["auth.login_failed", "auth.login_failed", "auth.login"]


def test_next_with_a_backslash_cannot_leave_the_site(client, orgs):
    token = csrf_token(client)
    response = client.post(
        "/login?next=/\\evil.example/",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/"


def test_next_keeps_the_path_prefix_behind_a_proxy(app, orgs):
    app.config["TRUSTED_PROXY_COUNT"] = 1
    # The test client's cookie jar sees /login, not /byok/login, so it would not send a
    # cookie scoped to /byok/; the cookie's path is checked through real nginx instead.
    app.config["SESSION_COOKIE_PATH"] = "/"
    from werkzeug.middleware.proxy_fix import ProxyFix

    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1)
    client = app.test_client()
    headers = {"X-Forwarded-Prefix": "/byok", "X-Forwarded-Proto": "https"}
    first = client.get("/settings/compliance", headers=headers)
    assert first.headers["Location"].startswith("/byok/login?next=")
    token = csrf_token(client, "/login", headers)
    response = client.post(
        "/login?next=/settings/compliance",
        data={"email": orgs["users"]["admin_a"], "password": PASSWORD, "csrf_token": token},
        # Over https, CSRF protection also wants a same-origin Referer (browsers send one).
        headers={**headers, "Referer": "https://localhost/byok/login"},
    )
    assert response.headers["Location"] == "/byok/settings/compliance"
    assert "Secure" in response.headers["Set-Cookie"]
