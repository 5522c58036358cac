"""Re-encrypting one range of items in batches: read, decrypt, re-encrypt, compare-and-swap.

Each batch is one transaction: the rewritten rows and the range's checkpoint commit together,
so a crash at any point leaves every item readable and the checkpoint consistent with them.
Any kind of the registry (portal.chat.kinds) works: its table and columns are all it needs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from portal import crypto
from portal.chat import counts
from portal.chat.kinds import Kind
from portal.db import utcnow
from portal.rotation.common import KeyServiceWait
from portal.rotation.models import RotationFailure

NO_ID = uuid.UUID(int=0)
CT_AT = 3  # a batch row: id, key_id, created_at, then the kind's ciphertext columns
Bound = uuid.UUID | None  # a range's bound or checkpoint (None: unbounded, or from the start)


@dataclass
class BatchResult:
    """What one batch did."""

    last_id: uuid.UUID | None
    rewritten: int
    skipped: int  # changed concurrently (compare-and-swap missed): already under the new key
    failed: list[tuple[uuid.UUID, str]]
    bytes: int


class Dialect:
    """The few SQL details that differ between PostgreSQL and SQLite."""

    def __init__(self, conn: Connection) -> None:
        """Read the dialect of the connection."""
        self.pg = conn.dialect.name == "postgresql"
        self.mark = "%s" if self.pg else "?"

    def uid(self, value: uuid.UUID | None) -> Any:
        """Bind a UUID the way SQLAlchemy's Uuid type stores it."""
        if value is None:
            return None
        return value if self.pg else value.hex

    def read_uid(self, value: Any) -> uuid.UUID:
        """Read a UUID from a raw row."""
        return value if isinstance(value, uuid.UUID) else uuid.UUID(hex=str(value))

    def marks(self, n: int) -> str:
        """Return n comma-separated placeholders."""
        return ", ".join([self.mark] * n)


def _where(d: Dialect, old_keys: Sequence[str], lo: Bound, hi: Bound) -> tuple[str, list]:
    """The filter of a range's remaining items under the old keys (after the cursor)."""
    sql = f"company_id = {d.mark} AND key_id IN ({d.marks(len(old_keys))}) AND id > {d.mark}"
    extra: list = []
    if lo is not None:
        sql += f" AND id >= {d.mark}"
        extra.append(d.uid(lo))
    if hi is not None:
        sql += f" AND id < {d.mark}"
        extra.append(d.uid(hi))
    return sql, extra


def select_batch(
    conn: Connection,
    kind: Kind,
    company_id: uuid.UUID,
    old_keys: Sequence[str],
    cursor: Bound,
    lo: Bound,
    hi: Bound,
    max_rows: int,
    max_bytes: int,
) -> list[tuple]:
    """Read the next rows still under an old key, bounded by rows and by bytes."""
    d = Dialect(conn)
    where, extra = _where(d, old_keys, lo, hi)
    params = [d.uid(company_id), *old_keys, d.uid(cursor or NO_ID), *extra]
    cols = ", ".join(kind.ct_columns)
    fetch = _fetch_binary if d.pg else _fetch
    if kind.size_column:
        # Big items: pick ids by size first so one batch never holds more than max_bytes.
        sizes = fetch(
            conn,
            f"SELECT id, {kind.size_column} FROM {kind.table} WHERE {where} "
            f"ORDER BY id LIMIT {int(max_rows)}",
            params,
        )
        chosen, total = [], 0
        for row_id, size in sizes:
            if chosen and total + size > max_bytes:
                break
            chosen.append(row_id)
            total += size
        if not chosen:
            return []
        return fetch(
            conn,
            f"SELECT id, key_id, created_at, {cols} FROM {kind.table} "
            f"WHERE id IN ({d.marks(len(chosen))}) "
            "ORDER BY id",
            chosen,
        )
    rows = fetch(
        conn,
        f"SELECT id, key_id, created_at, {cols} FROM {kind.table} WHERE {where} ORDER BY id "
        f"LIMIT {int(max_rows)}",
        params,
    )
    out, total = [], 0
    for row in rows:
        size = sum(len(v) for v in row[CT_AT:])
        if out and total + size > max_bytes:
            break
        out.append(row)
        total += size
    return out


def _fetch(conn: Connection, sql: str, params: Sequence) -> list[tuple]:
    """Run a query through the driver and return its rows."""
    return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(params)).fetchall()]


def _fetch_binary(conn: Connection, sql: str, params: Sequence) -> list[tuple]:
    """PostgreSQL: fetch in the binary protocol, so ciphertexts arrive without hex decoding."""
    with conn.connection.dbapi_connection.cursor(binary=True) as cur:
        cur.execute(sql, tuple(params))
        return cur.fetchall()


def reencrypt(
    rows: list[tuple], kind: Kind, company_id: uuid.UUID, ring: crypto.Keyring, d: Dialect
) -> tuple[list[tuple], list[tuple[uuid.UUID, str]], int]:
    """Decrypt each row with its key and encrypt it under the new key with the same AD."""
    cid = str(company_id)
    ads = [crypto.associated_data_for(cid, kind.table, column) for column in kind.ad_names]
    decrypt, encrypt = ring.decrypt, ring.encrypt
    updates, failed, nbytes = [], [], 0
    for row in rows:
        row_id = d.read_uid(row[0])
        rid = str(row_id)
        try:
            new_values = []
            for ad, blob in zip(ads, row[CT_AT:], strict=True):
                aad = ad(rid)
                new_values.append(bytes(encrypt(decrypt(blob, aad), aad)))
        except crypto.DecryptionError as exc:
            if exc.reason in crypto.TEMPORARY_FAILURES:
                # Not the item's fault: its key service refused or did not answer. The batch
                # is rolled back and the range waits (portal.rotation.worker).
                raise KeyServiceWait(exc.reason, "a key the run needs is not usable now") from None
            failed.append((row_id, exc.reason))
            continue
        # Every encryption draws a fresh random 96-bit nonce, so a value rewritten since it was
        # read has another nonce: comparing it (12 bytes) identifies the ciphertext read
        # without hashing megabytes of attachment on both sides.
        digests = [bytes(blob[crypto.NONCE_AT : crypto.BODY_AT]) for blob in row[CT_AT:]]
        nbytes += sum(len(v) for v in row[CT_AT:])
        updates.append((row[0], row[1], *digests, *new_values))
    return updates, failed, nbytes


def write_batch(conn: Connection, kind: Kind, new_key: str, updates: list[tuple]) -> list:
    """Rewrite the rows in one statement, only where key id and ciphertext are unchanged;
    return the ids of the rows it rewrote."""
    if not updates:
        return []
    d = Dialect(conn)
    n = len(kind.ct_columns)
    hashes = [f"h{i}" for i in range(n)]
    news = [f"c{i}" for i in range(n)]
    names = ["id", "k", *hashes, *news]
    if d.pg:
        # Arrays, one per column: a handful of binary parameters instead of thousands.
        source = (
            # Binary arrays: no per-element quoting or text parsing on either side.
            "unnest(%b::uuid[], %b::text[], "
            + ", ".join(["%b::bytea[]"] * (2 * n))
            + f") AS v({', '.join(names)})"
        )
        columns = list(zip(*updates, strict=True))
        params = [new_key, *(list(c) for c in columns)]
        col = {name: name for name in names}
    else:
        # SQLite names a VALUES subquery's columns column1..N (and a CTE would hide rowcount).
        row_sql = "(" + d.marks(2 + 2 * n) + ")"
        source = f"(VALUES {', '.join([row_sql] * len(updates))}) AS v"
        col = {name: f"column{i + 1}" for i, name in enumerate(names)}
        params = [new_key, *(value for row in updates for value in row)]
    sets = ", ".join(f"{ct} = v.{col[c]}" for ct, c in zip(kind.ct_columns, news, strict=True))
    checks = " AND ".join(
        f"substr(t.{ct}, {crypto.NONCE_AT + 1}, {crypto.NONCE_BYTES}) = v.{col[h]}"
        for ct, h in zip(kind.ct_columns, hashes, strict=True)
    )
    sql = (
        f"UPDATE {kind.table} AS t SET {sets}, key_id = {d.mark} FROM {source} "
        f"WHERE t.id = v.{col['id']} AND t.key_id = v.{col['k']} AND {checks} "
        # SQLite's RETURNING names the target table's columns bare (and PostgreSQL must not:
        # v has an id too).
        f"RETURNING {'t.id' if d.pg else 'id'}"
    )
    if d.pg:
        with conn.connection.dbapi_connection.cursor() as cur:
            cur.execute(sql, params)
            return [r[0] for r in cur.fetchall()]
    return [r[0] for r in conn.exec_driver_sql(sql, tuple(params)).fetchall()]


def record_failures(
    conn: Connection, run_id: uuid.UUID, kind: Kind, failed: list[tuple[uuid.UUID, str]]
) -> None:
    """List items that could not be re-encrypted (once each, however often retried)."""
    if not failed:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    rows = [
        {"run_id": run_id, "kind": kind.name, "item_id": item, "reason": r, "created_at": now}
        for item, r in failed
    ]
    conn.execute(insert(RotationFailure).values(rows).on_conflict_do_nothing())


def run_batch(
    conn: Connection,
    run_id: uuid.UUID,
    kind: Kind,
    company_id: uuid.UUID,
    old_keys: Sequence[str],
    new_key: str,
    ring: crypto.Keyring,
    cursor: Bound,
    lo: Bound,
    hi: Bound,
    max_rows: int,
    max_bytes: int,
) -> BatchResult:
    """Process one batch inside the caller's transaction (the caller commits the checkpoint)."""
    if conn.dialect.name == "postgresql":
        # A batch and its checkpoint commit together and replaying one is harmless, so a
        # crash that loses the last commits only means redoing them: no need to wait for fsync.
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
    rows = select_batch(conn, kind, company_id, old_keys, cursor, lo, hi, max_rows, max_bytes)
    if not rows:
        return BatchResult(None, 0, 0, [], 0)
    d = Dialect(conn)
    updates, failed, nbytes = reencrypt(rows, kind, company_id, ring, d)
    written = write_batch(conn, kind, new_key, updates)
    count_moved(conn, kind, company_id, new_key, rows, written)
    record_failures(conn, run_id, kind, failed)
    return BatchResult(
        d.read_uid(rows[-1][0]), len(written), len(updates) - len(written), failed, nbytes
    )


def count_moved(
    conn: Connection,
    kind: Kind,
    company_id: uuid.UUID,
    new_key: str,
    rows: list[tuple],
    written: list,
) -> None:
    """Move the rewritten rows from their old keys' item counts to the new key's, in the
    batch's own transaction (the compare-and-swap made sure each was under the key read)."""
    if not written:
        return
    moved = rows
    if len(written) != len(rows):  # some failed or changed meanwhile: only those rewritten
        ids = set(written)
        moved = [row for row in rows if row[0] in ids]
    counts.apply_moved(conn, kind.name, company_id, new_key, moved)
