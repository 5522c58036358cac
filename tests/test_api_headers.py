"""Headers of the data API: no response that may carry decrypted content is cached, and the
OpenAPI document's server URL keeps the path prefix the portal is served under."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from portal import create_app
from portal.chat.models import Attachment
from tests.support.api import API, Api


def test_every_get_endpoint_answers_cache_control_no_store(app, api):
    conv = api.conversation("secret title", {"secret": "metadata"})
    api.message(conv, "secret body")
    att = api.attachment(conv, b"secret bytes")
    broken = api.attachment(conv, b"will not decrypt")
    with app.extensions["db_engine"].begin() as conn:
        stmt = update(Attachment).where(Attachment.id == uuid.UUID(broken))
        conn.execute(stmt.values(content_ct=b"x"))
    anonymous = Api(app.test_client(), None)
    responses = {
        "list": api.get("/conversations"),
        "conversation": api.get(f"/conversations/{conv}"),
        "attachment": api.get(f"/attachments/{att}"),
        "unreadable attachment": api.get(f"/attachments/{broken}"),
        "not found": api.get(f"/attachments/{conv}"),
        "no such path": api.get("/nothing-here"),
        "bad limit": api.get("/conversations", limit="x"),
        "unauthenticated": anonymous.get("/conversations"),
        "openapi": api.get("/openapi.json"),
    }
    expected = {
        "list": 200,
        "conversation": 200,
        "attachment": 200,
        "unreadable attachment": 409,
        "not found": 404,
        "no such path": 404,
        "bad limit": 400,
        "unauthenticated": 401,
        "openapi": 200,
    }
    assert {name: r.status_code for name, r in responses.items()} == expected
    for name, response in responses.items():
        assert response.headers.get("Cache-Control") == "no-store", name
    assert responses["attachment"].data == b"secret bytes"


def test_writes_answer_cache_control_no_store_too(api):
    response = api.post_json("/conversations", {"title": "t"})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"


def test_the_openapi_server_url_is_the_api_path_without_a_prefix(client):
    assert client.get(f"{API}/openapi.json").get_json()["servers"] == [{"url": "/api/v1"}]


def test_the_openapi_server_url_keeps_the_wsgi_script_name(client):
    response = client.get(f"{API}/openapi.json", base_url="http://localhost/byok/")
    assert response.status_code == 200
    assert response.get_json()["servers"] == [{"url": "/byok/api/v1"}]


def test_the_openapi_server_url_keeps_a_trusted_proxy_prefix(app_config):
    proxied = create_app({**app_config, "TRUSTED_PROXY_COUNT": 1})
    try:
        response = proxied.test_client().get(
            f"{API}/openapi.json", headers={"X-Forwarded-Prefix": "/byok"}
        )
        assert response.get_json()["servers"] == [{"url": "/byok/api/v1"}]
    finally:
        proxied.extensions["db_engine"].dispose()


def test_a_rate_limited_answer_is_not_stored_either(app, api):
    app.config["RATELIMIT_API"] = "1/minute"
    assert api.get("/conversations").status_code == 200
    refused = api.get("/conversations")
    assert refused.status_code == 429
    assert refused.headers["Cache-Control"] == "no-store"
