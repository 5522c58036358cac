"""The registry of encrypted kinds is complete, and what iterates it covers a new kind.

A table holding ciphertext under a key but missing from portal/chat/kinds.py would be
skipped by per-key counts, rotation and the retirement check: the old key would be retired
(its sealed copy destroyed) while rows are still under it. The checker below fails then.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import uuid
from collections.abc import Iterable

import pytest
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, Uuid, select

import portal
from portal import crypto
from portal.chat import kinds
from portal.chat.keyrings import keyring_source
from portal.chat.models import Attachment, Conversation, Message
from portal.db import Base, get_session
from portal.keys import operations as ops
from portal.models import Organization
from tests.support.kinds import Note

# Tables with a key_id column that are not kinds of encrypted data, and why.
NOT_KINDS = {
    # The key table itself: its key_id is the id of the key the row describes (it holds
    # only sealed keys, never tenant data), not the key the row is encrypted under.
    "keys",
    # The per-key item counters: key_id names the key the counted items are under.
    "key_item_counts",
}
# What every kind's table needs besides its encrypted columns: the row's id and
# organisation (bound into the associated data), the key it is under (counted per key,
# rotated, checked before retirement) and when it was written (items before BYOK).
ROW_COLUMNS = ("id", "company_id", "key_id", "created_at")


def registry_problems(metadata: MetaData, registered: Iterable[kinds.Kind]) -> list[str]:
    """Say what disagrees between the tables of ``metadata`` and the registered kinds."""
    registered = tuple(registered)
    by_table = {kind.table: kind for kind in registered}
    problems = [
        f"table {table.name} has a key_id column but is not a registered kind"
        for table in metadata.sorted_tables
        if "key_id" in table.c and table.name not in by_table and table.name not in NOT_KINDS
    ]
    for kind in registered:
        table = kind.model.__table__
        for name in (*ROW_COLUMNS, *kind.ct_columns, *filter(None, [kind.size_column])):
            if name not in table.c:
                problems.append(f"kind {kind.name}: table {table.name} has no column {name}")
        for name in kind.ct_columns:
            if name in table.c and not isinstance(table.c[name].type, LargeBinary):
                problems.append(f"kind {kind.name}: {table.name}.{name} is not binary")
        if len(set(kind.ad_names)) != len(kind.ad_names):
            problems.append(f"kind {kind.name}: two columns share an associated-data name")
    return problems


def every_portal_module() -> None:
    """Import every module of the portal, so every mapped table is in Base.metadata."""
    for module in pkgutil.walk_packages(portal.__path__, "portal."):
        if not module.name.endswith("__main__"):  # runs the CLI when imported
            importlib.import_module(module.name)


def test_every_table_under_a_key_is_a_registered_kind_and_every_kind_matches_its_table():
    every_portal_module()
    assert registry_problems(Base.metadata, kinds.all_kinds()) == []
    assert {k.table for k in kinds.all_kinds()} == {"messages", "attachments", "conversations"}


def test_the_check_fails_for_a_table_under_a_key_that_is_not_registered():
    """The same checker, on a throwaway table: proof that the test above can fail."""
    metadata = MetaData()
    Table(
        "search_index",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("company_id", Uuid),
        Column("key_id", String(16)),
        Column("terms_ct", LargeBinary),
    )
    assert registry_problems(metadata, ()) == [
        "table search_index has a key_id column but is not a registered kind"
    ]
    Table("keys", metadata, Column("id", Uuid, primary_key=True), Column("key_id", String(16)))
    assert len(registry_problems(metadata, ())) == 1  # the keys table is the one exception


def test_the_check_fails_for_a_kind_whose_columns_are_not_on_its_table():
    wrong = kinds.Kind("typo", Message, (kinds.Column("bdy_ct", "body"),), "Typo")
    assert registry_problems(MetaData(), [wrong]) == [
        "kind typo: table messages has no column bdy_ct"
    ]
    twice = kinds.Kind("twice", Attachment, kinds.ATTACHMENTS.columns[:1] * 2, "Twice")
    assert registry_problems(MetaData(), [twice]) == [
        "kind twice: two columns share an associated-data name"
    ]


def test_one_kind_per_name_and_a_label_for_people():
    assert kinds.get("metadata").label == "Conversation metadata"
    assert kinds.of(Conversation(id=uuid.uuid4())) is kinds.METADATA
    assert kinds.of(Message) is kinds.MESSAGES
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.Kind("messages", Message, (), "Again"))
    with pytest.raises(KeyError):
        kinds.of(Organization)


def _message(company_id: uuid.UUID) -> Message:
    """A message row that is never stored."""
    return Message(id=uuid.uuid4(), company_id=company_id, conversation_id=uuid.uuid4())


def test_a_column_round_trips_and_records_the_key_it_is_under():
    key = crypto.generate_key()
    ring = crypto.Keyring(key)
    msg = _message(uuid.uuid4())
    kinds.encrypt_column(ring, msg, "body", "héllo".encode())
    assert msg.key_id == crypto.key_id(key).hex()
    assert b"h\xc3\xa9llo" not in msg.body_ct
    assert kinds.open_column(ring, msg, "body") == "héllo".encode()
    aad = crypto.associated_data(str(msg.company_id), "messages", "body", str(msg.id))
    assert ring.decrypt(msg.body_ct, aad) == "héllo".encode()  # the documented binding


def test_a_ciphertext_moved_to_another_row_column_or_organisation_does_not_decrypt():
    ring = crypto.Keyring(crypto.generate_key())
    company = uuid.uuid4()
    first, second = _message(company), _message(company)
    kinds.encrypt_column(ring, first, "body", b"for the first row only")
    kinds.encrypt_column(ring, second, "body", b"second")
    second.body_ct = first.body_ct
    with pytest.raises(crypto.DecryptionError):
        kinds.open_column(ring, second, "body")
    conv = Conversation(id=uuid.uuid4(), company_id=company)
    kinds.encrypt_column(ring, conv, "title", b"a title")
    conv.metadata_ct = conv.title_ct
    with pytest.raises(crypto.DecryptionError):
        kinds.open_column(ring, conv, "metadata")
    elsewhere = _message(uuid.uuid4())
    elsewhere.id, elsewhere.body_ct = first.id, first.body_ct
    with pytest.raises(crypto.DecryptionError):
        kinds.open_column(ring, elsewhere, "body")
    assert kinds.open_column(ring, first, "body") == b"for the first row only"


def _write_notes(app, org_id: uuid.UUID, n: int) -> None:
    """Write n notes the way chat writes its data: writable keyring, encrypt_column."""
    with app.app_context():
        db = get_session()
        ring = keyring_source().writable(db, org_id)
        for i in range(n):
            note = Note(id=uuid.uuid4(), company_id=org_id)
            kinds.encrypt_column(ring, note, "text", f"note {i}".encode())
            kinds.encrypt_column(ring, note, "tag", b"tag")
            note.size = len(note.text_ct) + len(note.tag_ct)
            db.add(note)
        db.commit()


def test_counts_per_key_and_the_status_panel_include_a_registered_test_kind(
    app, orgs, notes_kind, enable_byok, login_as
):
    org_a = orgs["a"]["id"]
    _write_notes(app, org_a, 2)  # under the platform key, before BYOK
    key_hex = crypto.key_id(enable_byok(org_a)).hex()
    _write_notes(app, org_a, 3)
    with app.app_context():
        db = get_session()
        counts = ops.item_counts(db, org_a)
        status = ops.status(db, db.get(Organization, org_a))
        platform = db.scalar(
            select(Note.key_id).where(Note.company_id == org_a, Note.key_id != key_hex)
        )
    assert counts[key_hex] == {
        "messages": 0,
        "attachments": 0,
        "metadata": 0,
        "notes": 3,
    }
    assert counts[platform]["notes"] == 2
    assert status.platform_items == 2
    assert [k["items_by_kind"]["notes"] for k in status.keys] == [3, 2]
    html = login_as("admin_a").get("/settings/compliance").get_data(as_text=True)
    headers = re.findall(r'<th scope="col">([^<]*)</th>', html)
    assert headers[3:7] == ["Messages", "Attachments", "Conversation metadata", "Test notes"]
    row = re.search(r'<tr data-fingerprint="[^"]+">(.*?)</tr>', html, re.S)
    assert row and re.findall(r"<td>(\d+)</td>", row.group(1)) == ["0", "0", "0", "3"]
