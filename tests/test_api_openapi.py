"""The data API's OpenAPI document: valid, complete, and true to the real responses."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from tests.support.api import (
    API,
)
from tests.support.web import random_id

# ---------------------------------------------------------------- OpenAPI


def openapi_paths(app: Flask) -> dict[str, set[str]]:
    """Return the app's /api/v1 routes in OpenAPI form, with their methods."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API + "/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule[len(API) :])
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routes.setdefault(path, set()).update(methods)
    return routes


def test_the_openapi_document_validates(client):
    """The published document is a valid OpenAPI 3.1 document."""
    import openapi_spec_validator as validator

    document = client.get(f"{API}/openapi.json").get_json()
    validator.validate(document)
    assert document["openapi"] == "3.1.0"


def test_the_openapi_document_lists_exactly_the_routes(app, client):
    """Every /api/v1 route is in the document with the same methods, and nothing else is."""
    document = client.get(f"{API}/openapi.json").get_json()
    documented = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in document["paths"].items()
    }
    assert documented == openapi_paths(app)


def test_every_documented_operation_lists_the_errors_it_can_answer(client):
    """Writes document 400/401/404/409/415/503, reads 401/404, uploads 413."""
    paths = client.get(f"{API}/openapi.json").get_json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path == "/openapi.json":
                assert operation["security"] == []
                continue
            assert {"401", "404"} <= codes, (path, method)
            if method == "post":
                assert {"201", "400", "409", "415", "503"} <= codes, (path, method)
    assert "413" in paths["/conversations/{conv_id}/attachments"]["post"]["responses"]


def test_responses_match_the_documented_schemas(api_a):
    """Real responses validate against the document's component schemas."""
    import jsonschema

    conv = api_a.conversation("Schema", {"a": 1})
    api_a.message(conv, "hello")
    api_a.attachment(conv, b"bytes")
    document = api_a.client.get(f"{API}/openapi.json").get_json()

    def check(instance: Any, name: str) -> None:
        """Validate an instance against a component schema of the document."""
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    check(api_a.get(f"/conversations/{conv}").get_json(), "Conversation")
    check(api_a.get("/conversations").get_json(), "ConversationPage")
    check(api_a.post_json("/conversations", {"title": ""}).get_json(), "Error")
    check(api_a.get(f"/conversations/{random_id()}").get_json(), "Error")
