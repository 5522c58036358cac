"""The data API's bearer tokens (401, the create-token command) and tenant isolation (404)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import select

from portal.chat.models import ApiToken
from portal.db import get_session, utcnow
from tests.support.api import (
    API,
    Api,
    assert_error,
    make_token,
    rows,
)
from tests.support.web import random_id

# ---------------------------------------------------------------- 401


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Bearer byok_wrong",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_requests_without_a_valid_bearer_token_answer_401(client, orgs, header):
    """Every data endpoint needs a valid bearer token."""
    headers = {"Authorization": header} if header is not None else {}
    conv = random_id()
    for method, path in (
        ("get", "/conversations"),
        ("post", "/conversations"),
        ("get", f"/conversations/{conv}"),
        ("post", f"/conversations/{conv}/messages"),
        ("post", f"/conversations/{conv}/attachments"),
        ("get", f"/attachments/{random_id()}"),
    ):
        response = getattr(client, method)(API + path, headers=headers, json={"title": "x"})
        assert_error(response, 401, "unauthorized")


def test_a_real_token_under_another_scheme_answers_401(app, client, orgs):
    """The token is only accepted as ``Bearer``; the scheme's case does not matter."""
    token = make_token(app, orgs["a"]["id"])
    for header in (f"Basic {token}", f"Token {token}", token, f"Bearer{token}"):
        response = client.get(f"{API}/conversations", headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")
    for header in (f"bearer {token}", f"BEARER  {token} "):
        response = client.get(f"{API}/conversations", headers={"Authorization": header})
        assert response.status_code == 200


def test_a_revoked_token_answers_401(app, api_a, orgs):
    """A token stops working once it is revoked."""
    assert api_a.get("/conversations").status_code == 200
    with app.app_context():
        db = get_session()
        token = db.scalar(select(ApiToken).where(ApiToken.company_id == orgs["a"]["id"]))
        token.revoked_at = utcnow()
        db.commit()
    assert_error(api_a.get("/conversations"), 401, "unauthorized")
    assert_error(api_a.post_json("/conversations", {"title": "x"}), 401, "unauthorized")


def test_a_tampered_token_answers_401(app, client, orgs):
    """Changing one character of a real token makes it useless."""
    token = make_token(app, orgs["a"]["id"])
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = client.get(f"{API}/conversations", headers={"Authorization": f"Bearer {tampered}"})
    assert_error(response, 401, "unauthorized")


# ---------------------------------------------------------------- 404 and tenancy


def test_another_organisation_ids_answer_404_and_change_nothing(app, api_a, api_b):
    """A token of org A cannot read or write org B's conversation or read its attachment."""
    b_conv = api_b.conversation("B secret")
    api_b.message(b_conv, "B message")
    b_att = api_b.attachment(b_conv, b"B file")
    assert_error(api_a.get(f"/conversations/{b_conv}"), 404, "not_found")
    assert_error(
        api_a.post_json(f"/conversations/{b_conv}/messages", {"body": "x", "author": "a"}),
        404,
        "not_found",
    )
    assert_error(api_a.upload(b_conv, b"x", "x.txt", "text/plain"), 404, "not_found")
    assert_error(api_a.get(f"/attachments/{b_att}"), 404, "not_found")
    assert len(rows(app, "messages")) == 1
    assert len(rows(app, "attachments")) == 1
    assert api_b.get(f"/conversations/{b_conv}").get_json()["title"] == "B secret"


def test_random_ids_answer_404(api_a):
    """Ids that name nothing answer 404 on every endpoint taking an id."""
    conv, att = random_id(), random_id()
    assert_error(api_a.get(f"/conversations/{conv}"), 404, "not_found")
    message = {"body": "x", "author": "a"}
    assert_error(api_a.post_json(f"/conversations/{conv}/messages", message), 404, "not_found")
    assert_error(api_a.upload(str(conv), b"x", "x.txt", "text/plain"), 404, "not_found")
    assert_error(api_a.get(f"/attachments/{att}"), 404, "not_found")


def test_a_conversation_id_is_not_an_attachment_id(api_a):
    """Ids of one kind do not open objects of another."""
    conv = api_a.conversation()
    assert_error(api_a.get(f"/attachments/{conv}"), 404, "not_found")


def test_malformed_ids_and_unknown_paths_answer_json_404(api_a):
    """Paths that match no route still answer a JSON error."""
    assert_error(api_a.get("/conversations/not-a-uuid"), 404)
    assert_error(api_a.get("/attachments/1234"), 404)
    assert_error(api_a.get("/nothing-here"), 404)


# ---------------------------------------------------------------- tokens


def test_create_token_cli_prints_the_token_alone_last_and_stores_only_its_hash(
    app, app_config, orgs
):
    """The CLI's last stdout line is a working token; the database holds its hash only."""
    env = {
        **os.environ,
        "BYOK_HOME": app_config["BYOK_HOME"],
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "BYOK_MASTER_KEY": app_config["BYOK_MASTER_KEY"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", "create-token", "--org", orgs["a"]["slug"]]
        + ["--name", "ci pipeline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"byok_[A-Za-z0-9_-]{43}", token), done.stdout
    assert done.stdout.count(token) == 1 and token not in done.stderr

    api = Api(app.test_client(), token)
    assert api.get("/conversations").status_code == 200

    stored = rows(app, "api_tokens")
    assert len(stored) == 1
    assert stored[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert stored[0].name == "ci pipeline"
    for value in stored[0]:
        assert token not in str(value)
        assert token[len("byok_") :] not in str(value)


def test_create_token_cli_refuses_an_unknown_org(app, app_config):
    """An unknown slug is an error on stderr with a non-zero exit and no token."""
    env = {**os.environ, "BYOK_HOME": app_config["BYOK_HOME"]}
    env.update({k: app_config[k] for k in ("DATABASE_URL", "REDIS_URL", "BYOK_MASTER_KEY")})
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", "create-token", "--org", "nope", "--name", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "nope" in done.stderr
    assert rows(app, "api_tokens") == []
