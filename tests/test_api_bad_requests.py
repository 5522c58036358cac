"""The data API refuses bad requests: 400, 415 and 413, and stores nothing."""

from __future__ import annotations

import io

import pytest

from tests.support.api import (
    API,
    Api,
    assert_error,
    make_token,
    rows,
)
from tests.support.web import random_id

# ---------------------------------------------------------------- 400 and 415


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "bad_json"),
        (b"", "bad_json"),
        (b"\xff\xfe\xfa", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'"a string"', "bad_json"),
        (b"null", "bad_json"),
        (b"42", "bad_json"),
        (b'{"title": NaN}', "bad_json"),
        (b'{"title": "x", "metadata": {"v": Infinity}}', "bad_json"),
        (b'{"title": "\\ud800"}', "bad_json"),
        (b'{"title": "x", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_deep"),
        (b"{}", "missing_field"),
        (b'{"title": ""}', "missing_field"),
        (b'{"title": "   "}', "missing_field"),
        (b'{"title": 5}', "missing_field"),
        (b'{"title": null}', "missing_field"),
        (b'{"title": "x", "metadata": []}', "bad_metadata"),
        (b'{"title": "x", "metadata": null}', "bad_metadata"),
        (b'{"title": "x", "metadata": "text"}', "bad_metadata"),
    ],
)
def test_bad_conversation_bodies_answer_400_and_store_nothing(app, api_a, raw, code):
    """Malformed JSON, non-objects and missing or blank fields are refused with 400."""
    response = api_a.post_raw("/conversations", raw, "application/json")
    assert_error(response, 400, code)
    assert rows(app, "conversations") == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"author": "ada"}, "missing_field"),
        ({"body": "hello"}, "missing_field"),
        ({"body": "", "author": "ada"}, "missing_field"),
        ({"body": "hi", "author": " \t"}, "missing_field"),
        ({"body": ["hi"], "author": "ada"}, "missing_field"),
        ({"body": "hi", "author": "x" * 201}, "bad_author"),
        ({"body": "hi", "author": "a\x00b"}, "bad_author"),
        ([{"body": "hi", "author": "ada"}], "bad_json"),
    ],
)
def test_bad_message_bodies_answer_400_and_store_nothing(app, api_a, body, code):
    """A message needs a non-blank body and an author of at most 200 characters."""
    conv = api_a.conversation()
    assert_error(api_a.post_json(f"/conversations/{conv}/messages", body), 400, code)
    assert rows(app, "messages") == []


def test_an_author_of_exactly_200_characters_is_accepted(api_a):
    """The author limit is inclusive."""
    conv = api_a.conversation()
    api_a.message(conv, "hi", author="é" * 200)
    assert api_a.get(f"/conversations/{conv}").get_json()["messages"][0]["author"] == "é" * 200


def test_nul_characters_round_trip_in_encrypted_fields(api_a):
    """NUL is fine where the value is encrypted (title, metadata, body)."""
    conv = api_a.conversation("a\x00b", {"k\x00": "v\x00"})
    api_a.message(conv, "x\x00y")
    body = api_a.get(f"/conversations/{conv}").get_json()
    assert body["title"] == "a\x00b" and body["metadata"] == {"k\x00": "v\x00"}
    assert body["messages"][0]["body"] == "x\x00y"


def test_a_lone_surrogate_in_a_message_answers_400_not_500(app, api_a):
    """JSON can escape a lone surrogate; it is not text and is refused."""
    conv = api_a.conversation()
    raw = b'{"body": "\\udc00 broken", "author": "ada"}'
    response = api_a.post_raw(f"/conversations/{conv}/messages", raw, "application/json")
    assert_error(response, 400, "bad_json")
    assert rows(app, "messages") == []


def test_an_attachment_without_a_file_field_answers_400(api_a):
    """The multipart body must carry the field ``file``."""
    conv = api_a.conversation()
    response = api_a.client.post(
        f"{API}/conversations/{conv}/attachments",
        data={"other": (io.BytesIO(b"x"), "x.txt")},
        content_type="multipart/form-data",
        headers=api_a.headers,
    )
    assert_error(response, 400, "missing_field")


def test_an_overlong_attachment_content_type_answers_400(app, api_a):
    """A content type that does not fit its column is refused, not a database error."""
    conv = api_a.conversation()
    response = api_a.upload(conv, b"x", "x.bin", "application/" + "x" * 300)
    assert_error(response, 400, "bad_content_type")
    assert rows(app, "attachments") == []


@pytest.mark.parametrize(
    "limit", ["0", "501", "-1", "abc", "", "1.5", "²", "1" * 5000, " 5", "0x10"]
)
def test_a_bad_limit_answers_400(api_a, limit):
    """``limit`` must be a whole number from 1 to 500, on both paginated endpoints."""
    conv = api_a.conversation()
    assert_error(api_a.get("/conversations", limit=limit), 400, "bad_limit")
    assert_error(api_a.get(f"/conversations/{conv}", limit=limit), 400, "bad_limit")


def test_limits_at_the_bounds_are_accepted(api_a):
    """1 and 500 are valid limits."""
    conv = api_a.conversation()
    for limit in ("1", "500"):
        assert api_a.get("/conversations", limit=limit).status_code == 200
        assert api_a.get(f"/conversations/{conv}", limit=limit).status_code == 200


def test_a_cursor_that_is_not_an_id_answers_400(api_a):
    """``after`` must be a UUID."""
    conv = api_a.conversation()
    assert_error(api_a.get("/conversations", after="not-an-id"), 400, "bad_after")
    assert_error(api_a.get(f"/conversations/{conv}", after="123"), 400, "bad_after")


def test_a_cursor_naming_nothing_of_yours_answers_400(api_a, api_b):
    """A cursor of another organisation, another conversation or nothing at all is refused."""
    conv = api_a.conversation()
    other_conv = api_a.conversation()
    other_message = api_a.message(other_conv, "elsewhere")
    b_conv = api_b.conversation()
    b_message = api_b.message(b_conv, "b's")
    assert_error(api_a.get("/conversations", after=str(random_id())), 400, "bad_after")
    assert_error(api_a.get("/conversations", after=b_conv), 400, "bad_after")
    for cursor in (str(random_id()), other_message, b_message):
        assert_error(api_a.get(f"/conversations/{conv}", after=cursor), 400, "bad_after")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"title": "x"}', "text/plain"),
        ("title=x", "application/x-www-form-urlencoded"),
        ('{"title": "x"}', "application/xml"),
    ],
)
def test_json_endpoints_refuse_other_media_types_with_415(app, api_a, data, content_type):
    """Conversations and messages are created from application/json only."""
    conv = api_a.conversation()
    assert_error(api_a.post_raw("/conversations", data, content_type), 415)
    assert_error(api_a.post_raw(f"/conversations/{conv}/messages", data, content_type), 415)
    assert len(rows(app, "conversations")) == 1
    assert rows(app, "messages") == []


def test_attachments_refuse_anything_but_multipart_with_415(app, api_a):
    """A JSON or raw body is not an upload."""
    conv = api_a.conversation()
    path = f"/conversations/{conv}/attachments"
    assert_error(api_a.post_json(path, {"file": "x"}), 415, "unsupported_media_type")
    assert_error(api_a.post_raw(path, b"raw", "application/octet-stream"), 415)
    assert rows(app, "attachments") == []


# ---------------------------------------------------------------- 413


@pytest.fixture
def small_app_config(app_config: dict) -> dict:
    """App settings with a 1 KiB attachment limit (set before ``app`` is created)."""
    app_config["MAX_ATTACHMENT_BYTES"] = 1024
    return app_config


def test_an_attachment_limit_set_in_config_is_enforced(small_app_config, app, orgs):
    """The limit comes from the app's config; 1024 bytes pass, 1025 do not."""
    api = Api(app.test_client(), make_token(app, orgs["a"]["id"]))
    conv = api.conversation()
    assert api.upload(conv, b"y" * 1024, "ok.bin", None).status_code == 201
    assert_error(api.upload(conv, b"y" * 1025, "no.bin", None), 413, "too_large")
    assert_error(api.upload(conv, b"y" * (2 * 1024 * 1024), "huge.bin", None), 413)
    assert len(rows(app, "attachments")) == 1
