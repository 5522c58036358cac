"""The per-process keyring cache: used between requests, ended on every process by a key event.

A second process (a Flask test client loop in a real subprocess, on the same database and
Redis) keeps a warm keyring; a key revoked in this process is refused there within a second.
A warm request reads no key row; with Redis stopped nothing is served from the cache.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from sqlalchemy import select

from portal import create_app
from portal.db import get_session
from portal.keys import loss
from portal.keys.keyring_cache import KEYGEN_PREFIX
from portal.keys.models import OrgKey
from portal.keys.transaction import key_operation
from portal.models import Organization
from tests.support.api import Api, make_token
from tests.support.queries import statements_matching

# Statements that load key rows (a keyring load, the storage policy); not column reads of
# other features such as the per-key counters.
KEY_QUERY = re.compile(r"\bSELECT keys\.id\b", re.IGNORECASE)

# Process 1: the portal behind a test client, answering "METHOD PATH" lines with one JSON
# line each: the status, the body, and how many statements read the keys table meanwhile.
CHILD = r"""
import json, re, sys
from sqlalchemy import event, select
from portal import create_app
config, token = json.loads(sys.argv[1]), sys.argv[2]
app = create_app(config)
pattern, count = re.compile(sys.argv[3], re.IGNORECASE), [0]
@event.listens_for(app.extensions["db_engine"], "before_cursor_execute")
def _count(conn, cursor, statement, *rest):
    count[0] += bool(pattern.search(statement))
client, headers = app.test_client(), {"Authorization": "Bearer " + token}
print("ready", flush=True)
for line in sys.stdin:
    method, path = line.split()
    before = count[0]
    body = {"author": "ada", "body": "from process 1"} if method == "POST" else None
    answer = client.open(path, method=method, json=body, headers=headers)
    out = {"status": answer.status_code, "body": answer.get_json(), "queries": count[0] - before}
    print(json.dumps(out), flush=True)
"""


class Process:
    """The other process: one request per call, answered over its standard streams."""

    def __init__(self, config: dict, token: str) -> None:
        """Start it and wait until its app is built."""
        # A file, not a pipe: a pipe could fill up and block it. Closed by stop().
        self.errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(config), token, KEY_QUERY.pattern],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.errors.seek(0)
            raise AssertionError("the other process did not start:\n" + self.errors.read())

    def request(self, method: str, path: str) -> dict:
        """Send one request through the other process's app and return what it answered."""
        self.proc.stdin.write(f"{method} /api/v1{path}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the other process stopped"
        return json.loads(line)

    def stop(self) -> None:
        """End it (closing its input ends its loop)."""
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.errors.close()


@pytest.fixture
def other_process(app: Flask, app_config: dict, orgs: dict) -> Iterator[Process]:
    """Process 1, holding a token of organisation A."""
    process = Process(app_config, make_token(app, orgs["a"]["id"], "process-1"))
    try:
        yield process
    finally:
        process.stop()


def key_queries(app: Flask):
    """Collect the statements that read the table on the app's engine."""
    return statements_matching(app, KEY_QUERY)


def revoke(app: Flask, org: dict) -> None:
    """Destroy the organisation's active BYOK key (the kill switch) and commit."""
    with app.app_context():
        db = get_session()
        with key_operation(db):
            loss.revoke(db, db.get(Organization, org["id"]), "cli", org["slug"])


def test_a_warm_request_neither_reads_key_rows_nor_unseals(
    app, orgs, api, enable_byok, monkeypatch
):
    enable_byok(orgs["a"]["id"])
    backend = app.extensions["custody"]
    unsealed: list[bytes] = []

    def counted(sealed: bytes, context: bytes) -> bytes:
        unsealed.append(context)
        return real(sealed, context)

    real = backend.unseal
    monkeypatch.setattr(backend, "unseal", counted)
    with key_queries(app) as cold:
        conv = api.conversation()
        api.message(conv, "first")
    with key_queries(app) as warm:
        before = len(unsealed)
        api.message(conv, "second")
        assert api.bodies(conv) == ["first", "second"]
    assert cold and unsealed, "the first write after a key event loads and unseals the keys"
    assert warm == [], "a warm write and read load the keys again"
    assert len(unsealed) == before, "a warm write and read unseal the keys again"


def test_a_key_revoked_in_another_process_is_refused_there_within_a_second(
    app, orgs, api, enable_byok, other_process
):
    enable_byok(orgs["a"]["id"])
    conv = api.conversation()
    api.message(conv, "kept")
    assert other_process.request("POST", f"/conversations/{conv}/messages")["status"] == 201
    warm = other_process.request("POST", f"/conversations/{conv}/messages")
    assert warm["status"] == 201 and warm["queries"] == 0, warm

    revoke(app, orgs["a"])
    revoked_at = time.monotonic()
    while True:
        answer = other_process.request("POST", f"/conversations/{conv}/messages")
        took = time.monotonic() - revoked_at
        if answer["status"] != 201:
            break
        assert took < 1.0, "process 1 still writes under the revoked key after a second"
    assert answer["status"] == 503 and answer["body"]["error"] == "key_unavailable", answer
    read = other_process.request("GET", f"/conversations/{conv}")
    assert read["body"]["messages"][0]["body"]["reason"] == "key_unavailable", read


def test_a_key_change_bumps_the_generation_once_committed_and_never_on_rollback(app, orgs):
    generation = f"{KEYGEN_PREFIX}{orgs['a']['id']}"
    client = redis.Redis.from_url(app.config["REDIS_URL"])
    before = int(client.get(generation) or 0)
    with app.app_context():
        db = get_session()
        row = db.scalars(select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"])).one()
        # A plain ORM change, not through the keys service: the mapper event still sees it.
        row.state_changed_by = "someone"
        db.flush()
        db.rollback()
        assert int(client.get(generation) or 0) == before
        row = db.scalars(select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"])).one()
        row.state_changed_by = "someone else"
        db.commit()
    assert int(client.get(generation) or 0) == before + 1


def test_with_redis_stopped_keys_come_from_the_database_and_a_revocation_bites(
    own_redis, app_config, services, request
):
    url, proc = own_redis
    app_config["REDIS_URL"] = url  # before the app is built
    app = request.getfixturevalue("app")
    orgs = request.getfixturevalue("orgs")
    enable_byok = request.getfixturevalue("enable_byok")
    other = create_app(app_config)  # another process's cache, on the same database and Redis
    try:
        enable_byok(orgs["a"]["id"])
        api = Api.for_org(app, orgs["a"]["id"])
        conv = api.conversation()
        api.message(conv, "before")
        with key_queries(app) as warm:
            api.message(conv, "warm")
        assert warm == []

        proc.kill()
        proc.wait(timeout=10)
        revoke(other, orgs["a"])  # its bump cannot reach Redis
        time.sleep(0.6)  # past the interval in which a kept keyring is not re-checked
        with key_queries(app) as down:
            refused = api.post_message(conv, "after")
            again = api.post_message(conv, "again")
        assert refused.status_code == again.status_code == 503, refused.get_json()
        assert len(down) >= 2, "with Redis stopped every request loads the keys"
        assert api.bodies(conv)[0]["reason"] == "key_unavailable"
    finally:
        other.extensions["db_engine"].dispose()
        app.config["REDIS_URL"] = services.redis_url  # the app fixture empties this one
