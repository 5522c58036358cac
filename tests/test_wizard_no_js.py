"""The wizard as plain form posts (no JavaScript): the tested key stays in its field.

Without htmx, Test Key answers with the whole page. That page keeps the pasted key in the
field (it is the admin's own key, in a no-store answer), so Save & Enable needs no second
paste; a key that did not pass is not echoed.
"""

from __future__ import annotations

from tests.support.html import by_testid, feedback, parse_html
from tests.support.web import PASSWORD
from tests.support.wizard import PAGE, admin, app_config, deployment, key_by_fp, new_key  # noqa: F401 - fixtures


def field_value(html: str, field_id: str) -> str:
    """Return what a textarea or input of the page holds."""
    node = parse_html(html).find(id=field_id)
    assert node is not None, f"no #{field_id}"
    if node.tag == "textarea":
        return "".join(c for c in node.children if isinstance(c, str))
    return node.attrs.get("value", "")


def form_data(html: str, form_id: str) -> dict[str, str]:
    """Return the named fields of a form as a browser would post them (no JavaScript)."""
    form = parse_html(html).find(id=form_id)
    assert form is not None, f"no #{form_id}"
    data = {}
    for node in form.walk():
        name = node.attrs.get("name")
        if not name or node.tag not in ("input", "textarea"):
            continue
        if node.attrs.get("type") in ("checkbox", "submit"):
            continue
        data[name] = (
            field_value(html, node.attrs["id"])
            if "id" in node.attrs
            else node.attrs.get("value", "")
        )
    return data


def plain(admin, path: str, data: dict):  # noqa: F811
    """POST a plain form (no htmx headers) of the Compliance Policies page."""
    return admin.client.post(f"{PAGE}/{path}", data={**data, "csrf_token": admin.token})


def test_plain_test_key_keeps_the_key_in_the_field_for_save_and_enable(app, admin, orgs):  # noqa: F811
    _, text, fp = new_key()
    tested = plain(admin, "byok/test", {"key": text + "\n"})
    assert tested.status_code == 200
    assert tested.headers["Cache-Control"] == "no-store"
    html = tested.get_data(as_text=True)
    assert by_testid(html, "tested-fingerprint") == fp
    assert field_value(html, "enable-key").strip() == text
    assert field_value(html, "enable-tested") == fp
    # Save & Enable posts the form exactly as the page returned it, plus the password.
    data = {**form_data(html, "enable-form"), "password": PASSWORD}
    done = plain(admin, "byok/enable", data)
    assert done.status_code == 303, done.get_data(as_text=True)
    assert key_by_fp(app, orgs["a"]["id"], fp).state == "active"
    after = admin.page()
    assert by_testid(after, "active-fingerprint") == fp
    assert text not in after


def test_plain_save_with_a_wrong_password_keeps_the_tested_key(app, admin, orgs):  # noqa: F811
    _, text, fp = new_key()
    html = plain(admin, "byok/test", {"key": text}).get_data(as_text=True)
    data = {**form_data(html, "enable-form"), "password": "not my password"}
    refused = plain(admin, "byok/enable", data)
    assert refused.status_code == 422
    assert refused.headers["Cache-Control"] == "no-store"
    again = refused.get_data(as_text=True)
    assert feedback(again, "enable", "password") == "That password is not correct."
    assert field_value(again, "enable-key").strip() == text
    assert field_value(again, "enable-tested") == fp
    done = plain(admin, "byok/enable", {**form_data(again, "enable-form"), "password": PASSWORD})
    assert done.status_code == 303


def test_plain_test_of_a_bad_key_does_not_echo_it(admin):  # noqa: F811
    text = "9f" * 32
    refused = plain(admin, "byok/test", {"key": text})
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert field_value(html, "enable-key") == ""
    assert text not in html


def test_plain_test_keys_keeps_both_rotation_keys(app, admin, orgs):  # noqa: F811
    _, current, _ = new_key()
    admin.enable_ok(current)
    _, new_text, new_fp = new_key()
    tested = plain(admin, "rotate/test", {"current_key": current, "new_key": new_text})
    assert tested.status_code == 200
    assert tested.headers["Cache-Control"] == "no-store"
    html = tested.get_data(as_text=True)
    assert field_value(html, "rotate-current_key").strip() == current
    assert field_value(html, "rotate-new_key").strip() == new_text
    assert field_value(html, "rotate-tested") == new_fp
    started = plain(admin, "rotate/start", {**form_data(html, "rotate-form"), "password": PASSWORD})
    assert started.status_code == 303, started.get_data(as_text=True)
    assert key_by_fp(app, orgs["a"]["id"], new_fp).state == "active"


def test_plain_perform_rotation_with_a_wrong_current_key_does_not_echo_the_keys(admin):  # noqa: F811
    _, current, _ = new_key()
    admin.enable_ok(current)
    _, wrong, _ = new_key()
    _, new_text, new_fp = new_key()
    data = {"current_key": wrong, "new_key": new_text, "tested_fingerprint": new_fp}
    refused = plain(admin, "rotate/start", {**data, "password": PASSWORD})
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert "This is not the active key" in feedback(html, "rotate", "current_key")
    assert field_value(html, "rotate-current_key") == ""
    assert field_value(html, "rotate-new_key") == ""
    assert wrong not in html and new_text not in html


def test_plain_save_of_a_key_used_before_does_not_echo_it(admin, orgs):  # noqa: F811
    _, text, _ = new_key()
    admin.enable_ok(text)
    assert admin.confirm("disable", orgs["a"]["slug"], acknowledge="y").status_code == 200
    html = plain(admin, "byok/test", {"key": text}).get_data(as_text=True)
    refused = plain(admin, "byok/enable", {**form_data(html, "enable-form"), "password": PASSWORD})
    assert refused.status_code == 422
    again = refused.get_data(as_text=True)
    assert "used by your organisation before" in feedback(again, "enable", "key")
    assert field_value(again, "enable-key") == ""
    assert text not in again
