"""Key custody: after a real API session over HTTP, no key or token is anywhere in the clear.

The whole database (raw files and every row), every Redis key and value, the files the portal
wrote, and the captured logs are searched for every organisation key, the master key (and the
keys derived from it) and every API token, as raw bytes, base64 (standard, urlsafe, unpadded,
at any byte alignment) and hex in either case. Positive controls prove the search finds what
it looks for, so the test cannot pass because it looked nowhere.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import select, update
from werkzeug.serving import make_server

from portal import crypto
from portal.chat.models import Message
from portal.chat.service import create_token, hash_token
from portal.db import get_session
from portal.keys.custody.master_key import derive_subkey
from portal.keys.models import OrgKey
from portal.keys.service import load_keys, mark_state, store_key, unseal
from portal.models import Organization
from tests.support.leaks import Secret, dump_everything, find_leaks, forms
from tests.support.web import MASTER_KEY_B64

# ------------------------------------------------------------------ a real HTTP session


@pytest.fixture
def http_server(app: Flask) -> Iterator[tuple[str, int]]:
    """Serve the app over real HTTP with werkzeug, whose request log is captured."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)


class HttpApi:
    """A keep-alive HTTP client of the data API with one bearer token."""

    def __init__(self, address: tuple[str, int], token: str) -> None:
        """Open a connection to the served portal."""
        self.conn = http.client.HTTPConnection(*address, timeout=30)
        self.token = token

    def call(self, method: str, path: str, body: bytes | None = None, **headers: str):
        """Send one request and return (status, content type, body bytes)."""
        headers.setdefault("Authorization", f"Bearer {self.token}")
        self.conn.request(method, "/api/v1" + path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()

    def json(self, method: str, path: str, document: Any = None, status: int = 200) -> Any:
        """Send JSON (if any), check the status and return the decoded answer."""
        body = json.dumps(document).encode() if document is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        got, _, raw = self.call(method, path, body, **headers)
        assert got == status, raw
        return json.loads(raw)

    def upload(self, conv: str, filename: str, content: bytes) -> str:
        """Attach a file with a hand-built multipart body."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, _, raw = self.call(
            "POST",
            f"/conversations/{conv}/attachments",
            body,
            **{"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert status == 201, raw
        return json.loads(raw)["id"]


def run_api_session(address: tuple[str, int], tokens: dict[str, str]) -> None:
    """Write and read conversations, messages and attachments for each org, errors included."""
    for org, token in tokens.items():
        api = HttpApi(address, token)
        for n in range(2):
            conv = api.json(
                "POST",
                "/conversations",
                {"title": f"{org} conversation {n}", "metadata": {"org": org, "n": n}},
                status=201,
            )["id"]
            for i in range(3):
                api.json(
                    "POST",
                    f"/conversations/{conv}/messages",
                    {"body": f"message {i} of {org}", "author": f"user{i}"},
                    status=201,
                )
            att = api.upload(conv, f"{org}-{n}.bin", bytes(range(256)) * 8)
            page = api.json("GET", f"/conversations/{conv}?limit=2")
            api.json("GET", f"/conversations/{conv}?limit=2&after={page['next_after']}")
            status, _, content = api.call("GET", f"/attachments/{att}")
            assert status == 200 and content == bytes(range(256)) * 8
        assert len(api.json("GET", "/conversations")["conversations"]) == 2
        # Error paths log too: a wrong scheme carrying the real token, a bad body, a 404.
        assert api.call("GET", "/conversations", Authorization=f"Basic {token}")[0] == 401
        assert (
            api.call("POST", "/conversations", b"{", **{"Content-Type": "application/json"})[0]
            == 400
        )
        assert api.call("GET", f"/conversations/{uuid.uuid4()}")[0] == 404
        api.conn.close()
    HttpApi(address, "byok_not-a-real-token").call("GET", "/conversations")


def read_a_tampered_message(
    app: Flask, address: tuple[str, int], company_id: uuid.UUID, token: str
) -> None:
    """Copy one message's ciphertext over another and read it, so a failure is audited."""
    with app.extensions["db_engine"].begin() as conn:
        mine = select(Message.id).where(Message.company_id == company_id).limit(2)
        first, second = conn.execute(mine).scalars()
        blob = conn.execute(select(Message.body_ct).where(Message.id == first)).scalar_one()
        conn.execute(update(Message).where(Message.id == second).values(body_ct=blob))
        conv = conn.execute(
            select(Message.conversation_id).where(Message.id == second)
        ).scalar_one()
    api = HttpApi(address, token)
    body = api.json("GET", f"/conversations/{conv}")
    assert {"status": "unreadable", "reason": "integrity"} in [m["body"] for m in body["messages"]]
    api.conn.close()


# ------------------------------------------------------------------ what must stay secret


def org_keys(app: Flask) -> list[Secret]:
    """Unseal every stored organisation key (the scan's needles; nothing else holds them)."""
    secrets = []
    with app.app_context():
        db = get_session()
        for org in db.query(Organization):
            loaded = load_keys(db, org.id)
            for row in loaded.rows:
                key = unseal(row)
                assert key is not None, f"{org.slug} key {row.key_id} cannot be unsealed"
                secrets.append(Secret(f"{org.slug} {row.origin} key {row.key_id}", key))
    return secrets


def master_secrets() -> list[Secret]:
    """The master key and the keys derived from it (either would unseal or forge)."""
    master = base64.b64decode(MASTER_KEY_B64)
    return [
        Secret("master key", master),
        Secret("sealing subkey", derive_subkey(master, b"key custody")),
        Secret("audit signing subkey", derive_subkey(master, b"audit-chain")),
    ]


def token_secrets(tokens: dict[str, str]) -> list[Secret]:
    """Each token as text, without its public prefix, and as the random bytes it encodes."""
    out = []
    for org, token in tokens.items():
        body = token.removeprefix("byok_")
        out += [
            Secret(f"token of {org}", token.encode()),
            Secret(f"token of {org} (body)", body.encode()),
            Secret(f"token of {org} (bytes)", base64.urlsafe_b64decode(body + "=")),
        ]
    return out


def enable_generated_key(app: Flask, company_id: uuid.UUID) -> None:
    """Give an organisation its own generated key, as enabling BYOK does."""
    with app.app_context():
        db = get_session()
        for row in load_keys(db, company_id).rows:
            mark_state(row, "decrypt_only", "admin@b.example")
        db.flush()
        store_key(
            db,
            company_id,
            crypto.generate_key(),
            origin="generated",
            state="active",
            actor="admin@b.example",
        )
        db.commit()


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG (SQL statements with their parameters included)."""
    caplog.set_level(logging.DEBUG)
    for name in ("werkzeug", "portal", "sqlalchemy.engine", "flask.app"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


# ------------------------------------------------------------------ the tests


def test_no_key_or_token_is_stored_or_logged_after_a_full_api_session(
    app, app_config, services, orgs, http_server, captured, capfd
):
    """Database, Redis, files and logs hold no org key, master key or token in any form."""
    tokens = {}
    with app.app_context():
        db = get_session()
        for org in ("a", "b"):
            tokens[org] = create_token(db, orgs[org]["id"], f"session {org}")
        db.commit()
    enable_generated_key(app, orgs["b"]["id"])
    run_api_session(http_server, tokens)
    read_a_tampered_message(app, http_server, orgs["a"]["id"], tokens["a"])

    corpus = dump_everything(app, services, app_config, captured, capfd)
    keys = org_keys(app)
    assert len(keys) == 3  # two platform keys and B's generated key

    # The corpus is real: requests were logged, SQL was logged, the rows and hashes were read.
    log_text = captured.text
    assert '"POST /api/v1/conversations HTTP/1.1" 201' in log_text
    assert "INSERT INTO messages" in log_text
    everything = b"\n".join(blob for _, blob in corpus)
    for token in tokens.values():
        assert hash_token(token).encode() in everything
    with app.app_context():
        sealed = [bytes(r.sealed) for r in get_session().query(OrgKey)]
    assert len(sealed) == 3 and all(s in everything for s in sealed)
    assert b"message 2 of b" not in everything  # bodies were encrypted, not stored
    assert any(where == "db audit_events.details" for where, _ in corpus)

    # The key the audit chains were signed with, as its source gives it (not re-derived here).
    signing = Secret("audit signing key", app.extensions["audit_key_source"].signing_key())
    leaks = find_leaks(keys + master_secrets() + [signing] + token_secrets(tokens), corpus)
    assert leaks == []


def test_the_scan_finds_a_key_planted_in_the_database_redis_and_logs(
    app, app_config, services, orgs, captured, capfd
):
    """Positive control: a key planted in each place, in each encoding, is reported there."""
    planted = crypto.generate_key()
    prefix_b64 = base64.b64encode(b"x" + planted + b"yz").decode()  # at byte offset 1
    engine = app.extensions["db_engine"]
    with engine.begin() as conn:
        conn.execute(
            update(OrgKey).where(OrgKey.company_id == orgs["a"]["id"]).values(sealed=planted)
        )
        conn.execute(
            update(Organization)
            .where(Organization.id == orgs["a"]["id"])
            .values(name=base64.b64encode(planted).decode())
        )
        conn.execute(
            update(Organization)
            .where(Organization.id == orgs["b"]["id"])
            .values(name="k=" + planted.hex().upper())
        )
    client = redis.Redis.from_url(services.redis_url)
    client.set("planted:urlsafe", base64.urlsafe_b64encode(planted).rstrip(b"="))
    client.hset("planted:hash", "field", prefix_b64)
    logging.getLogger("portal.test").debug("oops %s", planted.hex())
    print("stdout", base64.b64encode(planted).decode().rstrip("="))

    corpus = dump_everything(app, services, app_config, captured, capfd)
    leaks = find_leaks([Secret("planted", planted)], corpus)
    client.delete("planted:urlsafe", "planted:hash")

    def found(where: str, form: str) -> bool:
        """Tell whether the scan reported the planted key at a place in a form."""
        return f"{where}: planted as {form}" in leaks

    assert found("db keys.sealed", "raw")
    assert found("db organizations.name", "base64")
    assert found("db organizations.name", "HEX")
    assert found("redis b'planted:urlsafe'", "urlsafe base64")
    assert found("redis b'planted:hash'", "base64 offset 1")
    assert found("log portal.test", "hex")
    assert found("stdout", "base64 unpadded")
    if not services.is_postgres:
        assert any(leak.startswith("file test.sqlite3") for leak in leaks), leaks
    # And nothing is reported for a key that was never written anywhere.
    assert find_leaks([Secret("unused", crypto.generate_key())], corpus) == []


def test_every_encoding_of_a_key_is_recognised_inside_larger_text():
    """The forms cover raw, base64 at any alignment, urlsafe, unpadded and hex of any case."""
    key = crypto.generate_key()
    samples = {
        "raw": b"..." + key + b"...",
        "base64": b"key=" + base64.b64encode(key) + b";",
        "urlsafe": b"k " + base64.urlsafe_b64encode(key) + b" ",
        "hex": b"<" + key.hex().encode() + b">",
        "HEX": b"<" + key.hex().upper().encode() + b">",
    }
    for offset in range(3):
        wrapped = base64.b64encode(bytes(range(offset)) + key + b"tail")
        samples[f"embedded at {offset}"] = wrapped
        samples[f"urlsafe embedded at {offset}"] = base64.urlsafe_b64encode(b"?" * offset + key)
    for name, blob in samples.items():
        assert find_leaks([Secret("k", key)], [(name, blob)]), name
    # Thirty bytes of the key in base64 already count as a leak; an unrelated key does not.
    assert find_leaks([Secret("k", key)], [("part", base64.b64encode(key[:30]))])
    other = crypto.generate_key()
    unrelated = [("other", b"".join(forms(other).values()))]
    assert find_leaks([Secret("k", key)], unrelated) == []
