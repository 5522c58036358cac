"""Table layouts for a rotation, compared in pure SQL (docs/architecture.md, "Table layout").

    python bench/layout.py [--messages 1000000] [--layouts legacy,v7key,v7,v7ff50,side]

For each layout it creates a messages table in a throwaway PostgreSQL database
(BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test), loads --messages
rows of 330 bytes in one organisation with COPY, vacuums, and times one UPDATE that rewrites
every ciphertext and changes every key id, as a rotation does, then reports the share of HOT
(in-place) updates and the table's size. No crypto: this is the floor a layout allows.

- legacy: random version-4 ids; indexes (company_id, key_id, id), (conversation_id,
  created_at, id) (the layout before issue #14)
- v7key: UUIDv7 ids, the same indexes
- v7, v7ff70, v7ff50: UUIDv7; key_id in no index, (company_id, id), (conversation_id, id);
  fillfactor 100, 70, 50 (v7ff50 is the product's layout)
- side: the ciphertext and key id in a narrow table of their own (primary key only)

The last line is a JSON object with the seconds per layout.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
import uuid

import psycopg
import uuid_utils.compat as uuid_utils

BODY_BYTES = 330
OLD, NEW = "a" * 16, "b" * 16
FILLFACTOR = {"v7ff70": 70, "v7ff50": 50}


def create(conn: psycopg.Connection, layout: str) -> str:
    """Create the layout's tables; return the table a rotation rewrites."""
    ff = FILLFACTOR.get(layout)
    with_ff = f" WITH (fillfactor = {ff})" if ff else ""
    if layout == "side":
        conn.execute(
            "CREATE TABLE m (id uuid PRIMARY KEY, company_id uuid, conversation_id uuid, "
            "author text, created_at timestamptz)"
        )
        conn.execute("CREATE INDEX ON m (company_id, id)")
        conn.execute("CREATE INDEX ON m (conversation_id, id)")
        conn.execute("CREATE TABLE mc (id uuid PRIMARY KEY, key_id text, body_ct bytea)")
        return "mc"
    conn.execute(
        "CREATE TABLE m (id uuid PRIMARY KEY, company_id uuid, conversation_id uuid, "
        f"key_id text, author text, body_ct bytea, created_at timestamptz){with_ff}"
    )
    if layout in ("legacy", "v7key"):
        conn.execute("CREATE INDEX ON m (company_id, key_id, id)")
        conn.execute("CREATE INDEX ON m (conversation_id, created_at, id)")
    else:
        conn.execute("CREATE INDEX ON m (company_id, id)")
        conn.execute("CREATE INDEX ON m (conversation_id, id)")
    return "m"


def load(conn: psycopg.Connection, layout: str, messages: int) -> uuid.UUID:
    """COPY the rows in; return the organisation's id."""
    org = uuid.uuid4()
    convs = [uuid.uuid4() for _ in range(max(1, messages // 50))]
    new_id = uuid.uuid4 if layout == "legacy" else uuid_utils.uuid7
    body = os.urandom(BODY_BYTES)
    with conn.cursor() as cur:
        if layout == "side":
            ids = [new_id() for _ in range(messages)]
            sql = "COPY m (id, company_id, conversation_id, author, created_at) FROM STDIN"
            with cur.copy(sql) as copy:
                for i, row_id in enumerate(ids):
                    copy.write_row((row_id, org, convs[i % len(convs)], "bench", "2026-01-01"))
            with cur.copy("COPY mc (id, key_id, body_ct) FROM STDIN") as copy:
                for row_id in ids:
                    copy.write_row((row_id, OLD, body))
        else:
            sql = (
                "COPY m (id, company_id, conversation_id, key_id, author, body_ct, created_at) "
                "FROM STDIN"
            )
            with cur.copy(sql) as copy:
                for i in range(messages):
                    conv = convs[i % len(convs)]
                    copy.write_row((new_id(), org, conv, OLD, "bench", body, "2026-01-01"))
    conn.commit()
    return org


def measure(url: str, layout: str, messages: int) -> dict:
    """Load a layout and time one full rewrite; the table is dropped after."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS m, mc")
        table = create(conn, layout)
    with psycopg.connect(url) as conn:
        load(conn, layout, messages)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute(f"UPDATE {table} SET body_ct = body_ct || ''::bytea, key_id = %s", (NEW,))
        conn.commit()
        seconds = time.perf_counter() - started
        hot, updated = conn.execute(
            "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).fetchone()
        size = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS m, mc")
    return {"seconds": round(seconds, 2), "hot": round(hot / max(1, updated), 3), "mb": size >> 20}


def main() -> None:
    """Measure every layout asked for in one throwaway database."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--layouts", default="legacy,v7key,v7,v7ff70,v7ff50,side")
    args = parser.parse_args()
    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"byok_layout_{os.getpid()}_{secrets.token_hex(2)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + f"/{name}"
    results = {}
    try:
        for layout in args.layouts.split(","):
            results[layout] = measure(url, layout, args.messages)
            r = results[layout]
            print(
                f"{layout:8} rewrite {r['seconds']:7.2f} s  HOT {r['hot']:6.1%}  "
                f"after the rewrite {r['mb']} MB",
                flush=True,
            )
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps({"bench": "layout", "messages": args.messages, **results}))


if __name__ == "__main__":
    main()
