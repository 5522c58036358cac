"""The leak scanner: every encoding of a secret (raw, base64 at any alignment, hex) searched for
in the database (rows and files), Redis, the files the portal wrote and the captured logs.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url

from portal.db import Base
from tests.support.services import Services


@dataclass(frozen=True)
class Secret:
    """A value that must never be stored or logged, with a label for failure messages."""

    label: str
    value: bytes


def _b64_fragments(value: bytes, encode) -> dict[str, bytes]:
    """Base64 of the value at each of the three byte alignments it can have inside a blob.

    A key embedded in a larger base64 text encodes differently depending on its offset modulo
    3; the characters that depend on the key's bytes alone are the same wherever it sits.
    """
    out = {}
    for offset in range(3):
        encoded = encode(bytes(offset) + value + bytes(2))
        start = 0 if offset == 0 else 4  # skip the group mixing padding and key bytes
        full_groups = (offset + len(value)) // 3
        out[f"offset {offset}"] = encoded[start : full_groups * 4]
    return out


def forms(value: bytes) -> dict[str, bytes]:
    """Every encoding of a secret the scan looks for."""
    found = {
        "raw": value,
        "base64": base64.b64encode(value),
        "base64 unpadded": base64.b64encode(value).rstrip(b"="),
        "urlsafe base64": base64.urlsafe_b64encode(value).rstrip(b"="),
        "hex": value.hex().encode(),
        "HEX": value.hex().upper().encode(),
    }
    for name, fragment in _b64_fragments(value, base64.b64encode).items():
        found[f"base64 {name}"] = fragment
    for name, fragment in _b64_fragments(value, base64.urlsafe_b64encode).items():
        found[f"urlsafe base64 {name}"] = fragment
    assert all(len(f) >= 16 for f in found.values())  # long enough never to match by chance
    return found


def find_leaks(secrets: list[Secret], corpus: list[tuple[str, bytes]]) -> list[str]:
    """Return "where: what as form" for every secret found anywhere in the corpus."""
    needles = [(s.label, name, needle) for s in secrets for name, needle in forms(s.value).items()]
    leaks = []
    for where, blob in corpus:
        for label, name, needle in needles:
            if needle in blob:
                leaks.append(f"{where}: {label} as {name}")
    return leaks


def as_bytes(value: Any) -> bytes:
    """Turn a stored value into the bytes to search."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def dump_database(app: Flask, services: Services) -> list[tuple[str, bytes]]:
    """Every column of every row of every table, plus (SQLite) the raw database files."""
    engine = app.extensions["db_engine"]
    corpus: list[tuple[str, bytes]] = []
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
            columns = {
                table: [c[1] for c in conn.execute(text(f'PRAGMA table_info("{table}")'))]
                for (table,) in tables
            }
            types = {}
        else:
            found = conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
                )
            )
            columns, types = {}, {}
            for table, column, data_type in found:
                columns.setdefault(table, []).append(column)
                types[table, column] = data_type
        assert {"keys", "conversations", "messages", "attachments", "api_tokens"} <= set(columns)
        for table, names in columns.items():
            for column in names:
                # bytea as the stored bytes, everything else as PostgreSQL renders it to text.
                cast = "" if types.get((table, column), "bytea") == "bytea" else "::text"
                query = text(f'SELECT "{column}"{cast} FROM "{table}"')
                for (value,) in conn.execute(query):
                    corpus.append((f"db {table}.{column}", as_bytes(value)))
    if engine.dialect.name == "sqlite":
        path = Path(make_url(services.database_url).database)
        for file in sorted(path.parent.glob(path.name + "*")):  # the database, -wal and -shm
            corpus.append((f"file {file.name}", file.read_bytes()))
    return corpus


def dump_redis(url: str) -> list[tuple[str, bytes]]:
    """Every key of the Redis db: its name, its DUMP, and its value read by type."""
    client = redis.Redis.from_url(url)
    corpus: list[tuple[str, bytes]] = []
    for key in client.scan_iter(count=1000):
        where = f"redis {key!r}"
        corpus.append((where + " (name)", key))
        corpus.append((where + " (DUMP)", client.dump(key) or b""))
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [as_bytes(entry) for entry in client.xrange(key)]
        else:
            values = []
        corpus += [(where, as_bytes(v)) for v in values]
    return corpus


def dump_files(*folders: Path) -> list[tuple[str, bytes]]:
    """Every file under the given folders (the instance folder, the embedded Redis files)."""
    corpus = []
    for folder in folders:
        for file in sorted(folder.rglob("*")):
            if file.is_file() and not file.is_socket():
                corpus.append((f"file {file}", file.read_bytes()))
    return corpus


def dump_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> list:
    """Every captured log record (message, arguments, traceback) and all process output."""
    corpus = [("log text", caplog.text.encode("utf-8", "surrogatepass"))]
    for record in caplog.records:
        parts = [record.getMessage(), repr(record.args), record.exc_text or ""]
        corpus.append((f"log {record.name}", "\n".join(parts).encode("utf-8", "surrogatepass")))
    out, err = capfd.readouterr()
    corpus += [("stdout", out.encode()), ("stderr", err.encode())]
    return corpus


def dump_everything(app, services, app_config, caplog, capfd) -> list[tuple[str, bytes]]:
    """The database, Redis, the files on disk and the logs, as one searchable corpus."""
    folders = [Path(app_config["BYOK_HOME"])]
    if not services.is_postgres:
        folders.append(services.home)  # the SQLite files and the embedded Redis's data
    return (
        dump_database(app, services)
        + dump_redis(services.redis_url)
        + dump_files(*[f for f in folders if f.exists()])
        + dump_logs(caplog, capfd)
    )


def key_forms(key: bytes) -> list[bytes]:
    """Every encoding of a key that must never be found at rest (the scanner's ``forms``)."""
    return list(forms(key).values())


def scan_database(app: Flask, keys: list[bytes]) -> list[str]:
    """Return 'table.column' for every stored value holding any form of any of the keys."""
    hits = []
    engine = app.extensions["db_engine"]
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for column, value in row._mapping.items():
                    raw = as_bytes(value)
                    if raw and any(form in raw for k in keys for form in key_forms(k)):
                        hits.append(f"{table.name}.{column}")
    return hits


def scan_redis(app: Flask, keys: list[bytes]) -> list[str]:
    """Return the Redis keys whose name or value holds any form of any of the keys."""
    r = redis.Redis.from_url(app.config["REDIS_URL"])
    hits = []
    for name in r.scan_iter(count=1000):
        kind = r.type(name).decode()
        values: list[bytes] = [name]
        if kind == "string":
            values.append(r.get(name) or b"")
        elif kind == "hash":
            values += [b for pair in r.hgetall(name).items() for b in pair]
        elif kind == "list":
            values += r.lrange(name, 0, -1)
        elif kind == "set":
            values += list(r.smembers(name))
        elif kind == "zset":
            values += r.zrange(name, 0, -1)
        elif kind == "stream":
            values += [repr(e).encode() for e in r.xrange(name)]
        if any(form in v for v in values for k in keys for form in key_forms(k)):
            hits.append(name.decode(errors="replace"))
    return hits


class LeakScanner:
    """The scanner bound to this test's app and services (the ``leaks`` fixture)."""

    def __init__(self, app: Flask, services: Services, app_config: dict) -> None:
        """Remember where this test's data lives."""
        self.app, self.services, self.app_config = app, services, app_config

    def database(self, keys: list[bytes]) -> list[str]:
        """'table.column' of every stored value holding a form of one of the keys."""
        return scan_database(self.app, keys)

    def redis(self, keys: list[bytes]) -> list[str]:
        """Redis keys whose name or value holds a form of one of the keys."""
        return scan_redis(self.app, keys)

    def text(self, keys: list[bytes], *texts: str) -> list[str]:
        """The forms of the keys found in texts (pages, logs, cookies), as strings."""
        found = {f.decode("latin-1") for k in keys for f in key_forms(k)}
        return sorted(form for form in found if any(form in t for t in texts))

    def everywhere(
        self,
        secrets: list[Secret],
        caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture,
    ) -> list[str]:
        """Every leak of the secrets in the database, Redis, files on disk and logs."""
        corpus = dump_everything(self.app, self.services, self.app_config, caplog, capfd)
        return find_leaks(secrets, corpus)
