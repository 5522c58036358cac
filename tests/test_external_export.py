"""An export of an organisation whose key is in its own key service decrypts offline: the
wrapped data key in the export is unwrapped with the customer's own service, using only the
recipes of docs/format.md, and the data then decrypts like data under any key."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import hvac
import pytest
from flask import Flask

from portal.db import get_session
from portal.keys import export, external
from portal.keys.transaction import key_operation
from portal.models import Organization
from tests.support.api import Api
from tests.support.docs import doc_snippet
from tests.support.keyservices import pointed_at


@pytest.fixture(autouse=True, params=["vault_service", "kms_service"])
def service(request: pytest.FixtureRequest, app_config: dict):
    """A real key service the portal is pointed at."""
    running = pointed_at(request, app_config, request.param)
    return running


def _customer_unwrap(service, namespace: dict, wrapped_key: dict) -> bytes:
    """Unwrap as the customer would, with their own client and the documented recipe."""
    config = service.config
    if service.provider == "vault-transit":
        client = hvac.Client(url=config["VAULT_ADDR"], token=config["VAULT_TOKEN"])
        return namespace["unwrap_vault"](client, wrapped_key)
    kms = boto3.client(
        "kms",
        endpoint_url=config["AWS_ENDPOINT_URL"],
        region_name=config["AWS_REGION"],
        aws_access_key_id=config["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=config["AWS_SECRET_ACCESS_KEY"],
    )
    return namespace["unwrap_kms"](kms, wrapped_key)


def test_an_export_decrypts_offline_after_unwrapping_with_the_customers_service(
    app: Flask, orgs: dict, service, tmp_path: Path
) -> None:
    ref = service.new_key()
    with app.app_context():
        db = get_session()
        org = db.get(Organization, orgs["a"]["id"])
        with key_operation(db):
            external.connect(db, org, "cli", service.provider, ref)
        db.commit()
    api = Api.for_org(app, orgs["a"]["id"])
    conv = api.conversation("offline title")
    bodies = ["first words", "second words"]
    for body in bodies:
        api.message(conv, body)
    out = tmp_path / "export.jsonl"
    with app.app_context():
        db = get_session()
        export.write(db, db.get(Organization, orgs["a"]["id"]), out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    (ours,) = [r for r in records if r["record"] == "key" and r["origin"] == "external"]
    assert ours["wrapped_key"]["key_ref"] == ref

    namespace: dict = {}
    recipes = "".join(
        doc_snippet(marker) for marker in ("decrypt-snippet", "export-snippet", "unwrap-snippet")
    )
    assert "import portal" not in recipes and "from portal" not in recipes
    exec(recipes, namespace)  # noqa: S102 - the page's own recipes, run as a reader would
    data_key = _customer_unwrap(service, namespace, ours["wrapped_key"])
    got = [
        plaintext
        for record, column, plaintext in namespace["decrypt_export"](
            str(out), {ours["fingerprint"]: data_key}
        )
        if record["record"] == "message"
    ]
    assert sorted(got) == sorted(bodies)
