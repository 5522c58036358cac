"""The batch write: many messages of one conversation in one request, all stored or none."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from portal import crypto
from portal.db import Base, get_session
from portal.keys import external
from portal.keys.transaction import key_operation
from portal.models import Organization
from tests.support.api import API, Api, assert_error, make_token, platform_key, rows
from tests.support.keyservices import pointed_at
from tests.support.web import random_id


def batch_path(conv: str | uuid.UUID) -> str:
    """The batch endpoint of a conversation."""
    return f"/conversations/{conv}/messages:batch"


def batch(n: int, body: str = "message {i}", author: str = "ada") -> list[dict[str, str]]:
    """n valid messages, numbered."""
    return [{"author": f"{author}-{i}", "body": body.format(i=i)} for i in range(n)]


def post_batch(api: Api, conv: str | uuid.UUID, messages: Any):
    """POST a batch body ``{"messages": ...}``."""
    return api.post_json(batch_path(conv), {"messages": messages})


def stored(api: Api, conv: str, response) -> list[str]:
    """Check a 201 batch answer and return its ids."""
    assert response.status_code == 201, response.get_json()
    return response.get_json()["ids"]


# ---------------------------------------------------------------- stored in order


def test_a_batch_is_stored_in_request_order_and_reads_back(app, api_a):
    """201 with the ids in request order; a read returns the messages in that order."""
    conv = api_a.conversation()
    before = api_a.message(conv, "before")
    messages = [
        {"author": "zed", "body": "first"},
        {"author": "ada", "body": "second, with é and \x00 inside"},
        {"author": "mü", "body": "third " * 100},
        {"author": "ada", "body": "fourth"},
    ]
    ids = stored(api_a, conv, post_batch(api_a, conv, messages))
    after = api_a.message(conv, "after")

    assert len(ids) == len(set(ids)) == 4
    assert sorted(ids, key=uuid.UUID) == ids  # UUIDv7: the ids follow the order given
    read = api_a.read(conv)["messages"]
    assert [m["id"] for m in read] == [before, *ids, after]
    assert [(m["author"], m["body"]) for m in read[1:5]] == [
        (m["author"], m["body"]) for m in messages
    ]
    times = [m["created_at"] for m in read]
    assert times == sorted(times)
    # Paging with a cursor inside the batch continues in the same order.
    page = api_a.get(f"/conversations/{conv}", limit=2, after=ids[0]).get_json()
    assert [m["id"] for m in page["messages"]] == ids[1:3]


def test_every_stored_message_decrypts_with_its_own_associated_data(app, api_a, orgs):
    """Each body is under the org's key and bound to its own row: no other row's AD opens it."""
    conv = api_a.conversation()
    messages = batch(20, body="secret body {i}")
    ids = stored(api_a, conv, post_batch(api_a, conv, messages))
    key_id, key = platform_key(app, orgs["a"]["id"])
    ring = crypto.Keyring(encrypting=key)
    company = str(orgs["a"]["id"])
    by_id = {str(row.id): row for row in rows(app, "messages")}
    assert set(by_id) == set(ids)
    for msg_id, message in zip(ids, messages, strict=True):
        row = by_id[msg_id]
        assert row.key_id == key_id and crypto.blob_key_id(row.body_ct).hex() == key_id
        assert message["body"].encode() not in row.body_ct
        aad = crypto.associated_data(company, "messages", "body", msg_id)
        assert ring.decrypt(row.body_ct, aad) == message["body"].encode()
        assert row.author == message["author"] and str(row.conversation_id) == conv
    neighbour = crypto.associated_data(company, "messages", "body", ids[1])
    with pytest.raises(crypto.DecryptionError) as failure:
        ring.decrypt(by_id[ids[0]].body_ct, neighbour)
    assert failure.value.reason == "integrity"


# ---------------------------------------------------------------- how many, how large


def test_a_full_batch_of_500_messages_of_4_kb_is_stored_and_501_are_refused(app, api_a):
    """500 messages of 4 KB (about 2 MB of JSON) fit; 501 are refused and nothing is added."""
    conv = api_a.conversation()
    body = "x" * 4090 + " {i}"
    ids = stored(api_a, conv, post_batch(api_a, conv, batch(500, body=body)))
    assert len(ids) == 500
    page = api_a.get(f"/conversations/{conv}", limit=500).get_json()["messages"]
    assert [m["id"] for m in page] == ids
    assert page[499]["body"] == body.format(i=499)

    refused = assert_error(post_batch(api_a, conv, batch(501)), 400, "bad_batch_size")
    assert "500" in refused["message"]
    assert len(rows(app, "messages")) == 500


@pytest.fixture
def small_batches(app_config: dict) -> dict:
    """At most 3 messages a batch, and requests of about 1 MiB (set before ``app`` exists)."""
    app_config["MAX_BATCH_MESSAGES"] = 3
    app_config["MAX_ATTACHMENT_BYTES"] = 1024  # MAX_CONTENT_LENGTH is this plus 1 MiB
    return app_config


def test_the_batch_size_and_request_size_limits_come_from_config(small_batches, app, orgs):
    """MAX_BATCH_MESSAGES bounds a batch; a body over the request limit is a JSON 413."""
    api = Api(app.test_client(), make_token(app, orgs["a"]["id"]))
    conv = api.conversation()
    assert len(stored(api, conv, post_batch(api, conv, batch(3)))) == 3
    assert_error(post_batch(api, conv, batch(4)), 400, "bad_batch_size")
    too_large = assert_error(
        post_batch(api, conv, batch(3, body="y" * 400_000 + "{i}")), 413, "too_large"
    )
    assert str(app.config["MAX_CONTENT_LENGTH"]) in too_large["message"]
    assert len(rows(app, "messages")) == 3


# ---------------------------------------------------------------- all or nothing


BAD_MESSAGES = [
    ({"author": "ada"}, "missing_field"),
    ({"body": "hello"}, "missing_field"),
    ({"body": "", "author": "ada"}, "missing_field"),
    ({"body": "hi", "author": " \t"}, "missing_field"),
    ({"body": ["hi"], "author": "ada"}, "missing_field"),
    ({"body": "hi", "author": 7}, "missing_field"),
    ({"body": "hi", "author": "x" * 201}, "bad_author"),
    ({"body": "hi", "author": "a\x00b"}, "bad_author"),
]


@pytest.mark.parametrize(("bad", "code"), BAD_MESSAGES)
def test_one_bad_message_among_many_refuses_the_batch_as_the_single_write_would(
    app, api_a, bad, code
):
    """The item's error is the single endpoint's error for the same message; nothing is stored."""
    conv = api_a.conversation()
    single = assert_error(api_a.post_json(f"/conversations/{conv}/messages", bad), 400, code)
    messages = batch(100)
    messages[37] = bad
    refused = assert_error(post_batch(api_a, conv, messages), 400, "bad_batch")
    assert refused["items"] == [{"index": 37, "code": code, "message": single["message"]}]
    assert "nothing was stored" in refused["message"]
    assert rows(app, "messages") == []


def test_every_bad_message_is_listed_by_index(app, api_a):
    """All invalid items are reported at once, in order; non-objects are refused too."""
    conv = api_a.conversation()
    messages: list[Any] = batch(10)
    messages[2] = "just text"
    messages[5] = {"body": "hi", "author": "x" * 201}
    messages[9] = None
    refused = assert_error(post_batch(api_a, conv, messages), 400, "bad_batch")
    assert [(i["index"], i["code"]) for i in refused["items"]] == [
        (2, "bad_message"),
        (5, "bad_author"),
        (9, "bad_message"),
    ]
    assert rows(app, "messages") == []


def test_an_author_of_exactly_200_characters_is_accepted_in_a_batch(api_a):
    """The author limit is the single write's, inclusive."""
    conv = api_a.conversation()
    stored(api_a, conv, post_batch(api_a, conv, [{"author": "é" * 200, "body": "hi"}]))
    assert api_a.read(conv)["messages"][0]["author"] == "é" * 200


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{}", "missing_field"),
        (b'{"messages": null}', "missing_field"),
        (b'{"messages": {"author": "a", "body": "b"}}', "missing_field"),
        (b'{"messages": []}', "bad_batch_size"),
        (b'[{"author": "a", "body": "b"}]', "bad_json"),
        (b'{"messages": [{"author": "a", "body": "\\udc00"}]}', "bad_json"),
        (b'{"messages": [{"author": "a", "body": "b", "n": NaN}]}', "bad_json"),
        (b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}", "too_deep"),
        (b"{not json", "bad_json"),
    ],
)
def test_a_bad_batch_body_answers_400_and_stores_nothing(app, api_a, raw, code):
    """The body is read with the same rules as every JSON write."""
    conv = api_a.conversation()
    assert_error(api_a.post_raw(batch_path(conv), raw), 400, code)
    assert rows(app, "messages") == []


def test_a_batch_that_is_not_json_answers_415(app, api_a):
    """Only application/json is accepted."""
    conv = api_a.conversation()
    response = api_a.post_raw(batch_path(conv), b"author=a&body=b", "text/plain")
    assert_error(response, 415, "unsupported_media_type")
    assert rows(app, "messages") == []


# ---------------------------------------------------------------- who may write where


def test_another_organisations_conversation_answers_404(app, api_a, api_b):
    """A token of org B cannot write into org A's conversation, nor into a made-up one."""
    conv = api_a.conversation()
    assert_error(post_batch(api_b, conv, batch(2)), 404, "not_found")
    assert_error(post_batch(api_a, random_id(), batch(2)), 404, "not_found")
    assert rows(app, "messages") == []


def test_no_or_a_bad_token_answers_401(app, api_a):
    """The batch endpoint authenticates like every data API route."""
    conv = api_a.conversation()
    for api in (Api(app.test_client(), None), Api(app.test_client(), "byok_not-a-token")):
        assert_error(post_batch(api, conv, batch(1)), 401, "unauthorized")
    assert rows(app, "messages") == []


def test_a_portal_sign_in_does_not_reach_it_and_csrf_does_not_apply(app, client, login_as, api_a):
    """A session cookie is not a bearer token (401); a bearer token needs no CSRF token."""
    conv = api_a.conversation()
    signed_in = login_as("member_a")
    # The app does enforce CSRF on the portal's forms ...
    forged = app.test_client().post("/login", data={"email": "x@y.z", "password": "p"})
    assert forged.status_code == 400
    # ... but a signed-in browser reaches no data: the API takes bearer tokens only.
    response = signed_in.post(f"{API}{batch_path(conv)}", json={"messages": batch(1)})
    assert_error(response, 401, "unauthorized")
    # A bearer client sends no CSRF token and is not asked for one.
    assert len(stored(api_a, conv, post_batch(api_a, conv, batch(2)))) == 2


# ---------------------------------------------------------------- refusals of the key


def test_byok_required_refuses_the_batch_until_a_key_is_enabled(app, api_a, orgs, enable_byok):
    """A Dedicated org without its own key gets 409 byok_required; with one, the batch is
    stored under that key."""
    conv = api_a.conversation()
    orgs_table = Base.metadata.tables["organizations"]
    with app.extensions["db_engine"].begin() as conn:
        conn.execute(
            update(orgs_table).where(orgs_table.c.id == orgs["a"]["id"]).values(tier="dedicated")
        )
    refused = assert_error(post_batch(api_a, conv, batch(3)), 409, "byok_required")
    assert "BYOK" in refused["message"]
    assert rows(app, "messages") == []

    own = crypto.key_id(enable_byok(orgs["a"]["id"])).hex()
    ids = stored(api_a, conv, post_batch(api_a, conv, batch(3)))
    assert {r.key_id for r in rows(app, "messages")} == {own} and len(ids) == 3


@pytest.fixture
def vault(request: pytest.FixtureRequest, app_config: dict):
    """A real OpenBao Transit with the portal pointed at it (requested before ``app``)."""
    return pointed_at(
        request, app_config, "vault_service", KMS_CACHE_SECONDS=1, KMS_BREAKER_SECONDS=1
    )


def _connect(app: Flask, org_id: uuid.UUID, provider: str, ref: str) -> None:
    """Test and connect a key in the organisation's key service, as an admin would."""
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        with key_operation(db):
            assert external.test_connection(db, org, "cli", provider, ref).version
            tested = external.tested_marker(provider, ref, None)
            external.connect(db, org, "cli", provider, ref, tested=tested)
        db.commit()


def _refused_within(api: Api, conv: str, status: int, seconds: float):
    """Post a batch until it is refused with ``status`` (the data key cache expiring)."""
    deadline = time.monotonic() + seconds
    while True:
        response = post_batch(api, conv, batch(5))
        if response.status_code == status or time.monotonic() > deadline:
            return response
        assert response.status_code == 201, response.get_json()
        time.sleep(0.1)


def test_a_key_service_refusal_or_outage_stores_nothing(vault, app: Flask, orgs):
    """Revoked access answers 403 key_access_revoked; an outage 503 with Retry-After."""
    ref = vault.new_key()
    _connect(app, orgs["a"]["id"], vault.provider, ref)
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation()
    stored(api, conv, post_batch(api, conv, batch(5)))

    vault.revoke(ref)
    try:
        time.sleep(1.2)
        assert_error(_refused_within(api, conv, 403, 3), 403, "key_access_revoked")
    finally:
        vault.restore(ref)
    count = len(rows(app, "messages"))

    vault.stop()
    try:
        time.sleep(1.2)
        refused = _refused_within(api, conv, 503, 5)
        assert_error(refused, 503, "key_service_unreachable")
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        vault.start()
    assert len(rows(app, "messages")) == count


def test_the_batch_answers_match_the_openapi_document(api_a):
    """The 201 and the bad_batch 400 validate against the document's schemas."""
    import jsonschema

    document = api_a.get("/openapi.json").get_json()
    operation = document["paths"]["/conversations/{conv_id}/messages:batch"]["post"]
    limit = document["components"]["schemas"]["NewMessageBatch"]["properties"]["messages"]
    assert (limit["minItems"], limit["maxItems"]) == (1, 500)

    def check(response, status: str) -> None:
        """Validate a response against the operation's schema for its status."""
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        jsonschema.validate(
            response.get_json(),
            {**schema, "components": document["components"]},
            cls=jsonschema.Draft202012Validator,
        )

    conv = api_a.conversation()
    check(post_batch(api_a, conv, batch(2)), "201")
    refused = post_batch(api_a, conv, [{"author": "", "body": "x"}])
    check(refused, "400")
    assert refused.get_json()["items"][0]["index"] == 0
