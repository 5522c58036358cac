"""The data API's rate limit counts per authenticated token, whatever the spelling of the
Authorization header, and no token reaches a Redis key name."""

from __future__ import annotations

import hashlib

import pytest
import redis

from portal.chat.models import ApiToken
from portal.db import get_session
from tests.support.api import API, make_token

SPELLINGS = [
    "Bearer {t}",
    "bearer {t}",
    "BEARER {t}",
    "BeArEr {t}",
    "Bearer   {t}",
    "  Bearer {t}  ",
    "Bearer\t{t}",
]


def get_with(client, header: str):
    """GET the conversation list with an exact Authorization header."""
    return client.get(f"{API}/conversations", headers={"Authorization": header})


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_the_bearer_scheme_authenticates(app, orgs, spelling):
    token = make_token(app, orgs["a"]["id"])
    response = get_with(app.test_client(), spelling.format(t=token))
    assert response.status_code == 200, response.get_json()


def test_spellings_of_one_token_share_one_allowance(app, orgs):
    app.config["RATELIMIT_API"] = "3/minute"
    token = make_token(app, orgs["a"]["id"], "one")
    other = make_token(app, orgs["a"]["id"], "two")
    client = app.test_client()
    codes = [get_with(client, s.format(t=token)).status_code for s in SPELLINGS]
    assert codes == [200, 200, 200] + [429] * (len(SPELLINGS) - 3)
    # Another token of the same organisation has an allowance of its own.
    assert get_with(client, f"bearer {other}").status_code == 200


def test_rate_limit_keys_name_the_token_id_never_the_token(app, orgs):
    token = make_token(app, orgs["a"]["id"])
    client = app.test_client()
    for spelling in SPELLINGS:
        assert get_with(client, spelling.format(t=token)).status_code == 200
    with app.app_context():
        token_id = get_session().query(ApiToken).one().id
    names = [k.decode() for k in redis.Redis.from_url(app.config["REDIS_URL"]).keys("*")]
    limit_keys = [n for n in names if "api" in n]
    assert limit_keys and all(str(token_id) in n for n in limit_keys), names
    secret_forms = {token, token[5:], hashlib.sha256(token.encode()).hexdigest()[:16]}
    assert not any(form in n for n in names for form in secret_forms), names


def test_unauthenticated_requests_are_limited_per_address_and_answer_401(app, orgs):
    app.config["RATELIMIT_API"] = "2/minute"
    client = app.test_client()
    codes = [get_with(client, f"Bearer byok_wrong{i}").status_code for i in range(3)]
    assert codes == [401, 401, 429]
