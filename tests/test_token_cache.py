"""The cached token lookup: a known token is not looked up again, a revoked one is refused at
once on every process, only the token's hash is kept, and with Redis stopped nothing is cached.

The other process is a Flask test client loop in a real subprocess, on the same database and
Redis; the token is revoked here, through the ORM (no revocation UI exists yet).
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

from portal.api.token_cache import CACHE_NAME, TOKENGEN
from portal.chat.models import ApiToken
from portal.chat.service import hash_token
from portal.db import get_session, utcnow
from tests.support.api import Api, make_token
from tests.support.processes import free_port
from tests.support.queries import statements_matching

TOKEN_QUERY = re.compile(r'\bFROM "?api_tokens"?\b', re.IGNORECASE)

# Process 1: the portal behind a test client, answering each "PATH" line with its status.
CHILD = r"""
import sys
from portal import create_app
import json
client = create_app(json.loads(sys.argv[1])).test_client()
headers = {"Authorization": "Bearer " + sys.argv[2]}
print("ready", flush=True)
for line in sys.stdin:
    print(client.get("/api/v1" + line.strip(), headers=headers).status_code, flush=True)
"""


@pytest.fixture
def token(app: Flask, orgs: dict) -> str:
    """A live token of organisation A."""
    return make_token(app, orgs["a"]["id"], "cached")


@pytest.fixture
def other_process(app_config: dict, token: str) -> Iterator[subprocess.Popen]:
    """Process 1, presenting the token."""
    with tempfile.TemporaryFile(mode="w+") as errors:  # a pipe could fill up and block it
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(app_config), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait(timeout=30)
            errors.seek(0)
            raise AssertionError("the other process did not start:\n" + errors.read())
        try:
            yield proc
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)


def ask(proc: subprocess.Popen, path: str) -> int:
    """Send one GET through the other process; return its status."""
    proc.stdin.write(path + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, "the other process stopped"
    return int(line)


def token_queries(app: Flask):
    """Collect the statements that read the table on the app's engine."""
    return statements_matching(app, TOKEN_QUERY)


def revoke_token(app: Flask, token: str) -> None:
    """Revoke the token through the ORM and commit."""
    with app.app_context():
        db = get_session()
        row = db.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
        row.revoked_at = utcnow()
        db.commit()


def test_a_known_token_is_not_looked_up_again(app, token):
    api = Api(app.test_client(), token)
    with token_queries(app) as cold:
        assert api.get("/conversations").status_code == 200
    with token_queries(app) as warm:
        assert api.get("/conversations").status_code == 200
        assert api.get("/conversations").status_code == 200
    assert cold, "the first request looks the token up"
    assert warm == [], "a known token is looked up again"


def test_a_token_revoked_in_another_process_is_refused_there_within_a_second(
    app, token, other_process
):
    assert ask(other_process, "/conversations") == 200
    assert ask(other_process, "/conversations") == 200
    revoke_token(app, token)
    revoked_at = time.monotonic()
    while (status := ask(other_process, "/conversations")) == 200:
        assert time.monotonic() - revoked_at < 1.0, "a revoked token still works after a second"
    assert status == 401


def test_only_the_tokens_hash_is_kept(app, token):
    assert Api(app.test_client(), token).get("/conversations").status_code == 200
    kept = app.extensions["generation_caches"][CACHE_NAME]._slots
    assert list(kept) == [hash_token(token)]
    assert token not in repr(kept) and token.removeprefix("byok_") not in repr(kept)


def test_a_rollback_does_not_bump_the_token_generation_and_a_commit_does(app, token):
    client = redis.Redis.from_url(app.config["REDIS_URL"])
    before = int(client.get(TOKENGEN) or 0)
    with app.app_context():
        db = get_session()
        row = db.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
        row.revoked_at = utcnow()
        db.flush()
        db.rollback()
        assert int(client.get(TOKENGEN) or 0) == before
    revoke_token(app, token)
    assert int(client.get(TOKENGEN) or 0) == before + 1


def test_with_redis_unreachable_tokens_are_looked_up_every_time(app_config, request):
    # Nothing listens there: Redis is unreachable from the start.
    app_config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    app = request.getfixturevalue("app")
    token = request.getfixturevalue("token")
    api = Api(app.test_client(), token)
    try:
        with token_queries(app) as seen:
            assert api.get("/conversations").status_code == 200
            assert api.get("/conversations").status_code == 200
        assert len(seen) == 2, "a token was served from the cache without Redis"
        revoke_token(app, token)
        assert api.get("/conversations").status_code == 401
    finally:
        app.config["REDIS_URL"] = request.getfixturevalue("services").redis_url
