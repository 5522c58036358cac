"""An organisation's encrypted data as JSON Lines, to decrypt offline (docs/format.md).

Every record holds ciphertext exactly as stored, the key it is under (key id and
fingerprint) and the four associated-data fields of each value; never a key or a sealed
key. Rows are read in id-keyset chunks, so memory stays flat however much there is.
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
from portal.chat.models import Attachment, Conversation, Message
from portal.chat.service import iso
from portal.db import utcnow
from portal.keys.models import OrgKey
from portal.models import Organization

VERSION = 1


@dataclass(frozen=True)
class Kind:
    """One encrypted table: its record name, model, encrypted columns and plain fields."""

    record: str
    model: type
    # (associated-data column name, model attribute, plaintext encoding)
    values: tuple[tuple[str, str, str], ...]
    plain: tuple[str, ...]
    chunk: int


KINDS = (
    Kind(
        "conversation",
        Conversation,
        (("title", "title_ct", "utf-8"), ("metadata", "metadata_ct", "json")),
        (),
        500,
    ),
    Kind("message", Message, (("body", "body_ct", "utf-8"),), ("conversation_id", "author"), 500),
    Kind(
        "attachment",
        Attachment,
        (("filename", "filename_ct", "utf-8"), ("content", "content_ct", "bytes")),
        ("conversation_id", "content_type", "size"),
        # Attachments can be large: few per chunk.
        20,
    ),
)


def _fingerprint(key_id_hex: str) -> str:
    """The fingerprint of a stored hex key id."""
    return crypto.fingerprint(bytes.fromhex(key_id_hex))


def _plain(value: Any) -> Any:
    """A plain column value as JSON: ids in hyphenated lowercase form."""
    return str(value) if isinstance(value, uuid.UUID) else value


def _rows(session: Session, kind: Kind, company_id: uuid.UUID) -> Iterator[Any]:
    """The organisation's rows of one kind as plain tuples, in id order, a chunk at a time."""
    model = kind.model
    names = ("id", "key_id", "created_at", *kind.plain, *(attr for _, attr, _ in kind.values))
    columns = [getattr(model, name) for name in names]
    last: uuid.UUID | None = None
    while True:
        query = select(*columns).where(model.company_id == company_id).order_by(model.id)
        if last is not None:
            query = query.where(model.id > last)
        rows = session.execute(query.limit(kind.chunk)).all()
        yield from rows
        if len(rows) < kind.chunk:
            return
        last = rows[-1].id


def records(session: Session, org: Organization) -> Iterator[dict[str, Any]]:
    """Yield the export's records: header, keys, every encrypted row, then the counts."""
    company = str(org.id)
    yield {
        "record": "export",
        "version": VERSION,
        "exported_at": iso(utcnow()),
        "organization": {"id": company, "slug": org.slug, "name": org.name, "tier": org.tier},
    }
    keys = session.scalars(
        select(OrgKey).where(OrgKey.company_id == org.id).order_by(OrgKey.created_at)
    )
    for row in keys:
        yield {
            "record": "key",
            "key_id": row.key_id,
            "fingerprint": _fingerprint(row.key_id),
            "state": row.state,
            "origin": row.origin,
            "created_at": iso(row.created_at),
        }
    counts = {"conversations": 0, "messages": 0, "attachments": 0, "ciphertexts": 0}
    for kind in KINDS:
        table = kind.model.__tablename__
        for row in _rows(session, kind, org.id):
            row_id = str(row.id)
            values = {
                name: {
                    "ad": [company, table, name, row_id],
                    "encoding": encoding,
                    "ciphertext": base64.b64encode(getattr(row, attr)).decode("ascii"),
                }
                for name, attr, encoding in kind.values
            }
            yield {
                "record": kind.record,
                "id": row_id,
                **{name: _plain(getattr(row, name)) for name in kind.plain},
                "created_at": iso(row.created_at),
                "key_id": row.key_id,
                "fingerprint": _fingerprint(row.key_id),
                "values": values,
            }
            counts[table] += 1
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
