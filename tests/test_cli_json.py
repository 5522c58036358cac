"""``--json`` on ``rotation list`` and ``audit verify``: stable keys, never key material."""

from __future__ import annotations

import base64
import json

from portal import crypto
from portal.audit.actions import Action
from portal.db import get_session
from portal.events import emit
from tests.support.faults import start_run
from tests.support.rotation import enable_byok, seed

RESULT_KEYS = {"chain_id", "ok", "checked", "event_id", "seq", "reason"}


def _audited(app, company_id) -> None:
    """Record a couple of events on an organisation's chain."""
    with app.app_context():
        db = get_session()
        for _ in range(2):
            emit(db, Action.KEY_TEST, actor="cli", company_id=company_id)
        db.commit()


def test_rotation_list_json_filters_by_organisation(app, cli, orgs):
    old = enable_byok(app, orgs["a"]["id"])
    seed(app, orgs["a"]["id"], conversations=1, messages=1, attachments=0)
    new = crypto.generate_key()
    run_id = start_run(app, orgs["a"]["id"], old, new)
    [run] = json.loads(cli("rotation", "list", "--json", "--org", orgs["a"]["slug"]).stdout)
    assert (run["id"], run["state"], run["kind"]) == (str(run_id), "running", "rotation")
    assert json.loads(cli("rotation", "list", "--json", "--org", orgs["b"]["slug"]).stdout) == []
    everything = cli("rotation", "list", "--json")
    assert [r["id"] for r in json.loads(everything.stdout)] == [str(run_id)]
    for key in (old, new):
        assert base64.b64encode(key).decode() not in everything.stdout
        assert key.hex() not in everything.stdout
    human = cli("rotation", "list")
    assert human.stdout.startswith(f"{run_id}  rotation ") and "0/2" in human.stdout


def test_rotation_list_json_refuses_an_unknown_organisation(cli):
    result = cli("rotation", "list", "--json", "--org", "ghost")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: no organisation with slug 'ghost'\n"


def test_audit_verify_json_reports_every_chain(app, cli, orgs):
    _audited(app, orgs["a"]["id"])
    result = cli("audit", "verify", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"chains", "events", "broken", "signatures_checked", "results"}
    assert (report["broken"], report["signatures_checked"]) == (0, True)
    assert report["chains"] == len(report["results"]) >= 1
    assert all(set(r) == RESULT_KEYS and r["ok"] for r in report["results"])
    ours = [r for r in report["results"] if r["chain_id"] == str(orgs["a"]["id"])]
    assert [r["checked"] for r in ours] == [2]
    assert report["events"] == sum(r["checked"] for r in report["results"])


def test_audit_verify_json_names_a_chain_whose_head_signature_fails_and_exits_1(app, cli, orgs):
    _audited(app, orgs["a"]["id"])
    # Another signing key than the one that signed the heads: every signed head is wrong.
    app.extensions["audit_signing_key"] = b"\x01" * 32
    result = cli("audit", "verify", "--json", "--org", orgs["a"]["slug"])
    assert result.returncode == 1
    report = json.loads(result.stdout)
    [chain] = report["results"]
    assert (chain["chain_id"], chain["ok"], report["broken"]) == (str(orgs["a"]["id"]), False, 1)
    assert chain["reason"]
