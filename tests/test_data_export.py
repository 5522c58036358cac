"""``byok-portal data export``: an organisation's ciphertext, decrypted offline with only
docs/format.md and ``cryptography``'s AESGCM (portal code only sets the data up)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask
from sqlalchemy import LargeBinary, select, text

from portal.chat import kinds
from portal.chat import service as chat
from portal.db import Base, get_session
from portal.keys import export as export_module
from portal.keys import operations as ops
from portal.keys.models import OrgKey
from portal.models import Organization
from tests.support.docs import doc_snippet
from tests.support.processes import run_cli
from tests.support.web import MASTER_KEY_B64

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
TITLE = "Zürich ☕ plan"
METADATA = {"nested": {"a": [1, 2, {"b": "é"}]}, "n": 3, "ok": True}
BODIES = ["hello", "", "ünïcode 🎉 " * 50]
CONTENT = bytes(range(256)) * 40
FILENAME = "résumé.pdf"


def setup_org(app: Flask, slug: str, key: bytes | None) -> dict:
    """Data for an organisation: one conversation under its platform key, then (with a key)
    BYOK on and a conversation with messages and a file under that key."""
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == slug))
        early = chat.create_conversation(db, org.id, f"before BYOK {slug}", {"early": True})
        expected = {("conversation", str(early.id), "title"): f"before BYOK {slug}"}
        if key is None:
            db.commit()
            return expected
        text_key = base64.b64encode(key).decode()
        ops.enable(db, org, "cli", text_key, ops.test_key(db, org, "cli", text_key))
        conv = chat.create_conversation(db, org.id, TITLE, METADATA)
        expected[("conversation", str(conv.id), "title")] = TITLE
        expected[("conversation", str(conv.id), "metadata")] = METADATA
        for body in BODIES:
            msg = chat.add_message(db, conv, "user", body)
            expected[("message", str(msg.id), "body")] = body
        att = chat.add_attachment(db, conv, FILENAME, "application/pdf", CONTENT)
        expected[("attachment", str(att.id), "filename")] = FILENAME
        expected[("attachment", str(att.id), "content")] = CONTENT
        db.commit()
        return expected


def export(cli_env: dict, slug: str, out: Path) -> list[dict]:
    """Run the command and read the file it wrote."""
    result = run_cli(cli_env, "data", "export", "--org", slug, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # The summary names every registered kind with the count the file's end record holds.
    for kind in kinds.all_kinds():
        assert f"{kind.label.lower()} {records[-1][kind.table]}" in result.stdout
    return records


def test_an_export_decrypts_offline_with_only_the_documented_recipe(
    app: Flask, orgs: dict, cli_env: dict, tmp_path: Path
) -> None:
    key = secrets.token_bytes(32)  # the organisation's own key, generated here
    expected = setup_org(app, "org-a", key)
    setup_org(app, "org-b", secrets.token_bytes(32))
    out = tmp_path / "org-a.jsonl"
    records = export(cli_env, "org-a", out)

    namespace: dict = {}
    snippets = doc_snippet("decrypt-snippet") + doc_snippet("export-snippet")
    assert "portal" not in snippets
    exec(snippets, namespace)  # noqa: S102 - the page's own recipe, run as a reader would
    key_id = hmac.new(key, b"byok key id", hashlib.sha256).digest()[:8].hex()
    fingerprint = ":".join(key_id[i : i + 4] for i in range(0, 16, 4))
    got = {
        (record["record"], record["id"], column): plaintext
        for record, column, plaintext in namespace["decrypt_export"](str(out), {fingerprint: key})
    }
    under_ours = {k: v for k, v in expected.items() if not str(v).startswith("before BYOK")}
    assert got == under_ours

    # The value under the platform key is exported too, named by a key the reader lacks.
    by_id = {r.get("id"): r for r in records}
    (early,) = [k for k, v in expected.items() if str(v).startswith("before BYOK")]
    assert by_id[early[1]]["fingerprint"] != fingerprint
    keys = {r["fingerprint"]: r for r in records if r["record"] == "key"}
    assert keys[fingerprint]["key_id"] == key_id and keys[fingerprint]["state"] == "active"
    assert keys[by_id[early[1]]["fingerprint"]]["origin"] == "platform"

    header, end = records[0], records[-1]
    assert header["record"] == "export" and header["version"] == 1
    assert header["organization"]["slug"] == "org-a"
    assert end == {
        "record": "end",
        "conversations": 2,
        "messages": 3,
        "attachments": 1,
        "ciphertexts": 9,
    }
    company = str(orgs["a"]["id"])
    for record in records:
        for column, value in record.get("values", {}).items():
            table = {"conversation": "conversations", "message": "messages"}.get(
                record["record"], "attachments"
            )
            assert value["ad"] == [company, table, column, record["id"]]
            assert re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", record["id"])

    # Never a key: not ours, not the platform key, not a sealed copy; nothing of org B.
    raw = out.read_bytes()
    for secret in (key, base64.b64encode(key), key.hex().encode()):
        assert secret not in raw
    with app.app_context():
        db = get_session()
        for row in db.scalars(select(OrgKey)):
            assert base64.b64encode(row.sealed or b"\0" * 63) not in raw
            if row.company_id == orgs["b"]["id"]:
                assert row.key_id.encode() not in raw
    assert b"before BYOK org-b" not in raw and str(orgs["b"]["id"]).encode() not in raw
    assert out.stat().st_mode & 0o077 == 0


def test_the_page_lists_every_encrypted_column_and_how_ids_are_stored(
    app: Flask, orgs: dict
) -> None:
    doc = DOC.read_text(encoding="utf-8")
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, LargeBinary) and column.name.endswith("_ct"):
                name = column.name.removesuffix("_ct")
                assert f"| `{table.name}` | `{column.name}` | `{name}` |" in doc, column
    assert "32 hex digits" in doc and "hyphenated" in doc
    assert "stored next to each sealed key" not in doc
    with app.app_context():
        db = get_session()
        if db.get_bind().dialect.name == "sqlite":
            stored = db.execute(text("SELECT id FROM organizations LIMIT 1")).scalar()
            assert re.fullmatch(r"[0-9a-f]{32}", stored)


def test_a_sealed_key_unseals_with_the_documented_context(app: Flask, orgs: dict) -> None:
    """The sealing recipe and context string of the page open a real sealed key."""
    key = secrets.token_bytes(32)
    setup_org(app, "org-a", key)
    match = re.search(r"context\s+= \"([^\"]+)\"", DOC.read_text(encoding="utf-8"))
    assert match, "the page does not give the sealing context string"
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(OrgKey.company_id == orgs["a"]["id"], OrgKey.state == "active")
        )
        context = match.group(1).format(company_id=row.company_id, key_id=row.key_id)
        sealed = row.sealed
    master = base64.b64decode(MASTER_KEY_B64)
    sealing = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"byok-portal key custody"
    ).derive(master)
    assert AESGCM(sealing).decrypt(sealed[3:15], sealed[15:], context.encode()) == key


def test_rows_are_read_in_chunks_each_exported_once(
    app: Flask, orgs: dict, tmp_path: Path, monkeypatch
) -> None:
    expected = setup_org(app, "org-a", secrets.token_bytes(32))
    small = {name: replace(form, chunk=2) for name, form in export_module.SHAPES.items()}
    monkeypatch.setattr(export_module, "SHAPES", small)
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == "org-a"))
        counts = export_module.write(db, org, tmp_path / "a.jsonl")
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    ids = [json.loads(line).get("id") for line in lines]
    exported = [i for i in ids if i is not None]
    assert sorted(exported) == sorted({k[1] for k in expected})
    assert counts == {"conversations": 2, "messages": 3, "attachments": 1, "ciphertexts": 9}


def test_an_unknown_organisation_is_refused_and_no_file_is_written(
    cli_env: dict, orgs: dict, tmp_path: Path
) -> None:
    out = tmp_path / "none.jsonl"
    result = run_cli(cli_env, "data", "export", "--org", "no-such-org", "--out", str(out))
    assert result.returncode == 1
    assert "no organisation with slug 'no-such-org'" in result.stderr
    assert not out.exists()
