"""An organisation's encrypted data as JSON Lines, to decrypt offline (docs/format.md).

Every record holds ciphertext exactly as stored, the key it is under (key id and
fingerprint) and the four associated-data fields of each value; never a key or a sealed
key. A key held in the organisation's own key service comes with its wrapped data key,
which only that service can unwrap. Rows are read in id-keyset chunks, so memory stays
flat however much there is.
Every registered kind of encrypted data (portal/chat/kinds.py) is exported; ``SHAPES``
gives the record name and encodings of the kinds the format documents.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import crypto
from portal.chat import kinds
from portal.chat.service import iso
from portal.db import utcnow
from portal.keys.custody.keyservice import wrap_context
from portal.keys.models import OrgKey
from portal.models import Organization

VERSION = 1


@dataclass(frozen=True)
class Shape:
    """How the rows of one kind are written: record name, value encodings, plain fields."""

    record: str
    # Plaintext encoding by associated-data name ("utf-8", "json"); any other is "bytes".
    encodings: tuple[tuple[str, str], ...]
    plain: tuple[str, ...] = ()
    chunk: int = 500

    def encoding(self, ad_name: str) -> str:
        """How the plaintext of one value reads: utf-8, json or bytes."""
        return dict(self.encodings).get(ad_name, "bytes")


# In this order in the file: conversations before the messages and files that refer to them.
SHAPES = {
    "metadata": Shape("conversation", (("title", "utf-8"), ("metadata", "json"))),
    "messages": Shape("message", (("body", "utf-8"),), ("conversation_id", "author")),
    "attachments": Shape(
        "attachment",
        (("filename", "utf-8"),),
        ("conversation_id", "content_type", "size"),
        # Attachments can be large: few per chunk.
        20,
    ),
}


def shape(kind: kinds.Kind) -> Shape:
    """The shape of a kind: as declared, or for another kind its name and bytes values."""
    return SHAPES.get(kind.name) or Shape(kind.name, (), chunk=20 if kind.size_column else 500)


def exported_kinds() -> list[kinds.Kind]:
    """Every registered kind, those of ``SHAPES`` first and in its order."""
    order = list(SHAPES)
    return sorted(
        kinds.all_kinds(),
        key=lambda k: order.index(k.name) if k.name in order else len(order),
    )


def _fingerprint(key_id_hex: str) -> str:
    """The fingerprint of a stored hex key id."""
    return crypto.fingerprint(bytes.fromhex(key_id_hex))


def _plain(value: Any) -> Any:
    """A plain column value as JSON: ids in hyphenated lowercase form."""
    return str(value) if isinstance(value, uuid.UUID) else value


def _rows(session: Session, kind: kinds.Kind, company_id: uuid.UUID) -> Iterator[Any]:
    """The organisation's rows of one kind as plain tuples, in id order, a chunk at a time."""
    model, chunk = kind.model, shape(kind).chunk
    names = ("id", "key_id", "created_at", *shape(kind).plain, *kind.ct_columns)
    columns = [getattr(model, name) for name in names]
    last: uuid.UUID | None = None
    while True:
        query = select(*columns).where(model.company_id == company_id).order_by(model.id)
        if last is not None:
            query = query.where(model.id > last)
        rows = session.execute(query.limit(chunk)).all()
        yield from rows
        if len(rows) < chunk:
            return
        last = rows[-1].id


def _key_records(session: Session, org: Organization) -> Iterator[dict[str, Any]]:
    """One record per key the organisation has or had, oldest first."""
    keys = session.scalars(
        select(OrgKey).where(OrgKey.company_id == org.id).order_by(OrgKey.created_at)
    )
    for row in keys:
        record = {
            "record": "key",
            "key_id": row.key_id,
            "fingerprint": _fingerprint(row.key_id),
            "state": row.state,
            "origin": row.origin,
            "created_at": iso(row.created_at),
        }
        if row.external and row.sealed is not None:
            # Only the customer's own key service can unwrap it: the export stays key-free.
            record["wrapped_key"] = wrapped_record(row)
        yield record


def wrapped_record(row: OrgKey) -> dict[str, Any]:
    """The wrapped data key of an external key, and what its service needs to unwrap it."""
    return {
        "custody": row.custody,
        "key_ref": row.key_ref,
        "role_arn": row.role_arn,
        "context": wrap_context(row.company_id, row.key_id),
        "wrapped": base64.b64encode(bytes(row.sealed or b"")).decode("ascii"),
    }


def records(session: Session, org: Organization) -> Iterator[dict[str, Any]]:
    """Yield the export's records: header, keys, every encrypted row, then the counts."""
    company = str(org.id)
    yield {
        "record": "export",
        "version": VERSION,
        "exported_at": iso(utcnow()),
        "organization": {"id": company, "slug": org.slug, "name": org.name, "tier": org.tier},
    }
    yield from _key_records(session, org)
    ordered = exported_kinds()
    counts = {kind.table: 0 for kind in ordered} | {"ciphertexts": 0}
    for kind in ordered:
        form = shape(kind)
        for row in _rows(session, kind, org.id):
            row_id = str(row.id)
            values = {
                col.ad_name: {
                    "ad": [company, kind.table, col.ad_name, row_id],
                    "encoding": form.encoding(col.ad_name),
                    "ciphertext": base64.b64encode(getattr(row, col.attr)).decode("ascii"),
                }
                for col in kind.columns
            }
            yield {
                "record": form.record,
                "id": row_id,
                **{name: _plain(getattr(row, name)) for name in form.plain},
                "created_at": iso(row.created_at),
                "key_id": row.key_id,
                "fingerprint": _fingerprint(row.key_id),
                "values": values,
            }
            counts[kind.table] += 1
            counts["ciphertexts"] += len(values)
    yield {"record": "end", **counts}


def write(session: Session, org: Organization, out: Path) -> dict[str, int]:
    """Write the export to ``out`` (mode 0600, replaced only once complete); return counts."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    last: dict[str, Any] = {}
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            for record in records(session, org):
                file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                last = record
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {k: v for k, v in last.items() if k != "record"}
