"""Rotation benchmark on PostgreSQL: the product's rotation against two pure-SQL floors and a
naive ORM reference, with the workers' peak memory (issue #14).

    python bench/rotation.py [--messages 1000000] [--attachments 2000] [--workers 2] [--quick]

One run, one throwaway database, four timings over the same rows:

``legacy_floor_s``
    The pre-#14 layout, kept here as a fixed reference: ``legacy_conversations``,
    ``legacy_messages`` and ``legacy_attachments`` with the shape of migrations 0002 and 0003
    (random version-4 ids as primary keys, an index on (company_id, key_id, id) on each table,
    messages also on (conversation_id, created_at, id), attachments also on
    (conversation_id)), filled from the seeded rows in their write order by ``INSERT ...
    SELECT`` into the indexed tables (so the indexes grow as a live system's did) with new
    random ids (``gen_random_uuid()``; a conversation's is the md5 of its id, random-looking,
    so that its messages still point to it), then ``VACUUM ANALYZE`` and ``CHECKPOINT``.
    Timed: one transaction of plain SQL ``UPDATE``s that rewrite every ciphertext column and
    change ``key_id``, as a rotation must (``key_id = key_id`` would leave the indexed column
    alone and allow HOT updates, which no rotation gets). No crypto at all. The tables are
    dropped afterwards.
``floor_s``
    The same statements on the product's own tables, in whatever layout the migrations at
    head give them. For a fair comparison with both the legacy floor and the rotation,
    all three start from the same kind of state: freshly loaded, vacuumed, analysed,
    checkpointed. So only the first statement per table (ciphertexts rewritten, ``key_id`` to
    ``ffffffffffffffff``) is timed; an untimed second one puts ``key_id`` back, and
    ``VACUUM FULL`` then rewrites the tables compactly (keeping their fillfactor) and rebuilds
    their indexes, so the rotation does not start with the free space and dead index entries
    the floor left behind (free space in every page would favour its updates).
``rotation_s``
    The product end to end: ``start_rotation`` to a verified, completed run, with
    ``--workers`` real ``byok-portal worker`` processes on a queue of its own; the worker
    processes' peak resident memory is sampled every 20 ms.
``naive_s``
    The reference a straightforward ORM loop gives: 1,000 objects at a time (keyset
    pagination by id), decrypt, re-encrypt, commit.

Targets (issue #14, 1,000,000 messages and 2,000 attachments of 256 KiB): rotation_s /
legacy_floor_s <= 0.5 (moonshot 0.3), naive_s / rotation_s >= 5, worker peak RSS <= 200 MB,
rotation_s <= 15 s (aim). Seeding (binary COPY, ids from ``portal.db.new_id``) is not timed.
Beside the figures it prints the run's own history (when each milestone came) and the share
of updates to ``messages`` that PostgreSQL made in place (HOT) in each rewrite.

Needs PostgreSQL (BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test; a
throwaway database is created beside it and dropped) and Redis (BENCH_REDIS_URL, default
redis://127.0.0.1:6379/10, flushed). The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from common import (  # noqa: E402
    ATTACHMENT_BYTES,
    b64,
    create_database,
    drop_database,
    key_value,
    seed,
)
from sqlalchemy import select  # noqa: E402

from portal import create_app, crypto  # noqa: E402
from portal.chat.kinds import associated_data as ad  # noqa: E402
from portal.chat.models import Attachment, Conversation, Message  # noqa: E402
from portal.db import get_session, make_engine  # noqa: E402
from portal.migrate import upgrade  # noqa: E402

TABLES = ("messages", "attachments", "conversations")
# Every ciphertext column of each table, rewritten by the floors.
CIPHERTEXTS = {
    "messages": ("body_ct",),
    "attachments": ("content_ct", "filename_ct"),
    "conversations": ("title_ct", "metadata_ct"),
}
FLOOR_KEY = bytes.fromhex("ffffffffffffffff")  # the key id the floors write
ROTATION_TIMEOUT_S = 3600

# The pre-#14 layout (migrations 0002 and 0003): random uuid4 ids, key_id indexed.
LEGACY_DDL = """
CREATE TABLE legacy_conversations (
    id uuid PRIMARY KEY, company_id uuid NOT NULL, key_id varchar(16) NOT NULL,
    title_ct bytea NOT NULL, metadata_ct bytea NOT NULL, created_at timestamptz NOT NULL);
CREATE INDEX ix_legacy_conversations_company_created
    ON legacy_conversations (company_id, created_at, id);
CREATE INDEX ix_legacy_conversations_company_key ON legacy_conversations (company_id, key_id, id);
CREATE TABLE legacy_messages (
    id uuid PRIMARY KEY, company_id uuid NOT NULL, conversation_id uuid NOT NULL,
    key_id varchar(16) NOT NULL, author varchar(200) NOT NULL, body_ct bytea NOT NULL,
    created_at timestamptz NOT NULL);
CREATE INDEX ix_legacy_messages_conversation_order
    ON legacy_messages (conversation_id, created_at, id);
CREATE INDEX ix_legacy_messages_company_key ON legacy_messages (company_id, key_id, id);
CREATE TABLE legacy_attachments (
    id uuid PRIMARY KEY, company_id uuid NOT NULL, conversation_id uuid NOT NULL,
    key_id varchar(16) NOT NULL, filename_ct bytea NOT NULL, content_ct bytea NOT NULL,
    content_type varchar(200) NOT NULL, size bigint NOT NULL, created_at timestamptz NOT NULL);
CREATE INDEX ix_legacy_attachments_conversation_id ON legacy_attachments (conversation_id);
CREATE INDEX ix_legacy_attachments_company_key ON legacy_attachments (company_id, key_id, id);
"""
# Random-looking ids derived from the seeded ones (md5 of the id): what uuid4 gave the old
# layout, while messages still find their conversation. Rows go in the seeded (write) order.
LEGACY_FILL = """
INSERT INTO legacy_conversations
    SELECT md5(id::text)::uuid, company_id, %(kid)s, title_ct, metadata_ct, created_at
    FROM conversations WHERE company_id = %(org)s;
INSERT INTO legacy_messages
    SELECT gen_random_uuid(), company_id, md5(conversation_id::text)::uuid, %(kid)s, author,
           body_ct, created_at
    FROM messages WHERE company_id = %(org)s;
INSERT INTO legacy_attachments
    SELECT gen_random_uuid(), company_id, md5(conversation_id::text)::uuid, %(kid)s,
           filename_ct, content_ct, content_type, size, created_at
    FROM attachments WHERE company_id = %(org)s;
ALTER TABLE legacy_conversations ADD FOREIGN KEY (company_id)
    REFERENCES organizations (id) ON DELETE CASCADE;
ALTER TABLE legacy_messages ADD FOREIGN KEY (company_id)
    REFERENCES organizations (id) ON DELETE CASCADE;
ALTER TABLE legacy_messages ADD FOREIGN KEY (conversation_id)
    REFERENCES legacy_conversations (id) ON DELETE CASCADE;
ALTER TABLE legacy_attachments ADD FOREIGN KEY (company_id)
    REFERENCES organizations (id) ON DELETE CASCADE;
ALTER TABLE legacy_attachments ADD FOREIGN KEY (conversation_id)
    REFERENCES legacy_conversations (id) ON DELETE CASCADE;
"""


def statements(script: str) -> list[str]:
    """The statements of a script, one by one (psycopg binds parameters into one only)."""
    return [sql.strip() for sql in script.split(";") if sql.strip()]


def autocommit(engine, *statements: str) -> None:
    """Run maintenance statements (VACUUM, CHECKPOINT) outside a transaction."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for sql in statements:
            conn.exec_driver_sql(sql)


def data_bytes(engine) -> int:
    """Ciphertext bytes stored across the three tables."""
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT (SELECT coalesce(sum(octet_length(body_ct)),0) FROM messages)"
                " + (SELECT coalesce(sum(octet_length(content_ct) + octet_length(filename_ct)),0)"
                "    FROM attachments)"
                " + (SELECT coalesce(sum(octet_length(title_ct) + octet_length(metadata_ct)),0)"
                "    FROM conversations)"
            ).scalar()
        )


def update_counters(engine, table: str) -> tuple[int, int]:
    """Rows updated and of them HOT-updated in a table so far (pg_stat_user_tables)."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        row = conn.exec_driver_sql(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).one()
    return int(row[0]), int(row[1])


def rewrite(conn, prefix: str, org_id: uuid.UUID, key) -> None:
    """The floor: rewrite every ciphertext and set key_id on each table, SQL only."""
    for table in TABLES:
        sets = ", ".join(f"{c} = {c} || ''::bytea" for c in CIPHERTEXTS[table])
        conn.exec_driver_sql(
            f"UPDATE {prefix}{table} SET {sets}, key_id = %s WHERE company_id = %s",
            (key, org_id),
        )


def legacy_floor(engine, org_id: uuid.UUID, old: bytes) -> tuple[float, float]:
    """Time the floor on copies of the rows in the pre-#14 layout; (seconds, HOT share)."""
    params = {"kid": crypto.key_id(old).hex(), "org": org_id}
    with engine.begin() as conn:
        for sql in statements(LEGACY_DDL):
            conn.exec_driver_sql(sql)
        for sql in statements(LEGACY_FILL):
            conn.exec_driver_sql(sql, params if "%(" in sql else ())
    autocommit(engine, "VACUUM ANALYZE", "CHECKPOINT")
    before = update_counters(engine, "legacy_messages")
    started = time.perf_counter()
    with engine.begin() as conn:
        rewrite(conn, "legacy_", org_id, FLOOR_KEY.hex())
    elapsed = time.perf_counter() - started
    hot = hot_share(engine, "legacy_messages", before)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE legacy_attachments, legacy_messages, legacy_conversations")
    autocommit(engine, "CHECKPOINT")
    return elapsed, hot


def floor(engine, org_id: uuid.UUID, old: bytes) -> tuple[float, float]:
    """Time the floor on the product's tables, then restore them; (seconds, HOT share)."""
    with engine.connect() as conn:
        ffff = key_value(conn, "messages", FLOOR_KEY)
        kid = key_value(conn, "messages", crypto.key_id(old))
    autocommit(engine, "VACUUM ANALYZE", "CHECKPOINT")
    before = update_counters(engine, "messages")
    started = time.perf_counter()
    with engine.begin() as conn:
        rewrite(conn, "", org_id, ffff)
    elapsed = time.perf_counter() - started
    hot = hot_share(engine, "messages", before)
    with engine.begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(
                f"UPDATE {table} SET key_id = %s WHERE company_id = %s", (kid, org_id)
            )
    autocommit(engine, f"VACUUM FULL {', '.join(TABLES)}", "ANALYZE", "CHECKPOINT")
    return elapsed, hot


def hot_share(engine, table: str, before: tuple[int, int]) -> float:
    """Share of a table's updates since ``before`` that were HOT (statistics may lag)."""
    for _ in range(120):  # a backend reports at most once a second, idle ones within 10 s
        upd, hot = update_counters(engine, table)
        if upd > before[0]:
            return (hot - before[1]) / (upd - before[0])
        time.sleep(0.1)
    return float("nan")


class RssSampler(threading.Thread):
    """Sample the resident memory of every process in the workers' process groups."""

    def __init__(self, pgids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pgids = set(pgids)
        self.peak: dict[int, int] = dict.fromkeys(pgids, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        """Poll /proc every 20 ms."""
        while not self.stop.is_set():
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    pgid = os.getpgid(int(pid_dir.name))
                    if pgid not in self.pgids:
                        continue
                    for line in (pid_dir / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1]) * 1024
                            self.peak[pgid] = max(self.peak[pgid], rss)
                except (OSError, ProcessLookupError, ValueError):
                    continue
            time.sleep(0.02)


def product_rotation(
    app, env: dict[str, str], org_slug: str, old: bytes, new: bytes, workers: int, log: Path
) -> tuple[float, list[float], dict, float]:
    """Rotate with the product end to end: enqueue to verified, with real RQ workers."""
    from portal.models import Organization
    from portal.rotation.models import RotationEvent, RotationRun
    from portal.rotation.progress import progress as run_progress
    from portal.rotation.queue import enqueue_ranges
    from portal.rotation.start import start_rotation

    engine = app.extensions["db_engine"]
    with log.open("ab") as out:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "portal.cli", "worker"],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            for _ in range(workers)
        ]
    sampler = RssSampler([p.pid for p in procs])
    sampler.start()
    time.sleep(2.0)  # workers up before the clock starts
    before = update_counters(engine, "messages")
    started, wall = time.perf_counter(), datetime.now(UTC)
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == org_slug))
        run = start_rotation(db, org, "bench", b64(old), b64(new))
        db.commit()
        run_id = run.id
    planned = time.perf_counter()
    enqueue_ranges(app, run_id)
    print(
        f"  start_rotation + commit {planned - started:.2f} s, "
        f"enqueue {time.perf_counter() - planned:.2f} s",
        flush=True,
    )
    state = "running"
    while state not in ("completed", "failed", "cancelled"):
        if time.perf_counter() - started > ROTATION_TIMEOUT_S:
            state = "timed out"
            break
        time.sleep(0.05)
        with engine.connect() as conn:
            state = conn.execute(
                select(RotationRun.state).where(RotationRun.id == run_id)
            ).scalar_one()
    elapsed = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    with app.app_context():
        db = get_session()
        info = run_progress(db, db.get(RotationRun, run_id)).as_json()
        for at, message in db.execute(
            select(RotationEvent.at, RotationEvent.message)
            .where(RotationEvent.run_id == run_id)
            .order_by(RotationEvent.id)
        ):
            print(f"  {(at - wall).total_seconds():7.2f} s  {message}")
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)
    if state != "completed":
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"rotation ended {state}: {info}\nworker log ({log}):\n{tail}")
    hot = hot_share(engine, "messages", before)  # the workers' sessions ended: stats flushed
    return elapsed, [v / 1e6 for v in sampler.peak.values()], info, hot


def naive(app, org_id: uuid.UUID, old: bytes, new: bytes) -> float:
    """The reference: load ORM objects 1,000 at a time, re-encrypt, commit every 1,000."""
    ring = crypto.Keyring(new, decrypt_only=[old])
    new_id = crypto.key_id(new).hex()
    old_id = crypto.key_id(old).hex()
    started = time.perf_counter()
    with app.app_context():
        db = get_session()
        for model, columns, table in (
            (Message, (("body", "body_ct"),), "messages"),
            (Attachment, (("filename", "filename_ct"), ("content", "content_ct")), "attachments"),
            (Conversation, (("title", "title_ct"), ("metadata", "metadata_ct")), "conversations"),
        ):
            # Keyset pagination: where key_id is not indexed, "the first 1,000 still under the
            # old key" would scan every row already done, each time.
            last = uuid.UUID(int=0)
            while True:
                batch = list(
                    db.scalars(
                        select(model)
                        .where(model.company_id == org_id, model.key_id == old_id, model.id > last)
                        .order_by(model.id)
                        .limit(1000)
                    )
                )
                if not batch:
                    break
                for item in batch:
                    for column, attr in columns:
                        aad = ad(org_id, table, column, item.id)
                        setattr(
                            item,
                            attr,
                            bytes(ring.encrypt(ring.decrypt(getattr(item, attr), aad), aad)),
                        )
                    item.key_id = new_id
                last = batch[-1].id
                db.commit()
                db.expunge_all()
    return time.perf_counter() - started


def share(value: float) -> float | None:
    """A share for the JSON line (null where the statistics never arrived)."""
    return None if math.isnan(value) else round(value, 3)


def verdict(ok: bool) -> str:
    """How a figure stands against its target."""
    return "met" if ok else "NOT met"


def main() -> None:
    """Seed, then measure both floors, the product's rotation and the naive reference."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--attachments", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="100,000 messages and 200 attachments")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.attachments = 100_000, 200
    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    redis.Redis.from_url(redis_url).flushdb()
    url, name = create_database(base)
    home = tempfile.mkdtemp(prefix="byok-bench-")
    master = b64(os.urandom(32))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "BYOK_HOME": home,
        "BYOK_MASTER_KEY": master,
        # A queue of its own: no other worker on this Redis can take (and lose) its jobs.
        "RQ_QUEUE": f"bench-{os.getpid()}",
    }
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        app = create_app(
            {
                "DATABASE_URL": url,
                "REDIS_URL": redis_url,
                "BYOK_HOME": home,
                "BYOK_MASTER_KEY": master,
                "RQ_QUEUE": env["RQ_QUEUE"],
            }
        )
        engine = app.extensions["db_engine"]
        from portal.keys import operations as ops
        from portal.orgs import create_org

        key1, key2, key3 = (crypto.generate_key() for _ in range(3))
        with app.app_context():
            db = get_session()
            org = create_org(db, "Bench Org", "org_community")
            fp = ops.test_key(db, org, "bench", b64(key1))
            ops.enable(db, org, "bench", b64(key1), fp)
            db.commit()
            org_id, slug = org.id, org.slug
        t0 = time.perf_counter()
        seed(app, org_id, key1, args.messages, args.attachments)
        seed_s = time.perf_counter() - t0
        print(
            f"seeded {args.messages} messages, {args.attachments} attachments of "
            f"{ATTACHMENT_BYTES // 1024} KiB in {seed_s:.1f} s",
            flush=True,
        )
        items = args.messages + args.attachments + max(1, args.messages // 50)
        mbytes = data_bytes(engine) / 1e6
        legacy_s, legacy_hot = legacy_floor(engine, org_id, key1)
        print(f"legacy floor {legacy_s:.2f} s", flush=True)
        floor_s, floor_hot = floor(engine, org_id, key1)
        print(f"floor {floor_s:.2f} s", flush=True)
        rotation_s, rss, info, rotation_hot = product_rotation(
            app, env, slug, key1, key2, args.workers, Path(home) / "workers.log"
        )
        print(f"rotation {rotation_s:.2f} s", flush=True)
        naive_s = naive(app, org_id, key2, key3)
        rows = [
            ("legacy floor (pre-#14 SQL)", legacy_s, legacy_hot),
            ("floor (SQL, this layout)", floor_s, floor_hot),
            (f"rotation ({args.workers} workers)", rotation_s, rotation_hot),
            ("naive ORM", naive_s, None),
        ]
        print(f"\n{items} items, {mbytes:.1f} MB of ciphertext")
        print(f"{'':28} {'seconds':>9} {'items/s':>11} {'MB/s':>9} {'HOT (messages)':>15}")
        for label, secs, hot in rows:
            hot_text = "" if hot is None else f"{hot:.0%}"
            print(
                f"{label:28} {secs:9.2f} {items / secs:11.0f} {mbytes / secs:9.1f} {hot_text:>15}"
            )
        ratio_rl = rotation_s / legacy_s
        ratio_rf = rotation_s / floor_s
        ratio_nr = naive_s / rotation_s
        peak = max(rss)
        print(
            f"rotation / legacy floor = {ratio_rl:.2f} (target <= 0.5, moonshot 0.3: "
            f"{verdict(ratio_rl <= 0.5)}{', moonshot met' if ratio_rl <= 0.3 else ''})"
        )
        print(f"naive / rotation = {ratio_nr:.2f} (target >= 5: {verdict(ratio_nr >= 5)})")
        print(f"rotation / floor of this layout = {ratio_rf:.2f} (no target)")
        print(
            f"worker peak RSS: {', '.join(f'{r:.0f} MB' for r in rss)} "
            f"(target <= 200 MB: {verdict(peak <= 200)})"
        )
        print(f"rotation {rotation_s:.1f} s (aim <= 15 s: {verdict(rotation_s <= 15)})")
        print(f"rotation progress: {info['done']} done, {info['failed']} failed")
        print(
            json.dumps(
                {
                    "bench": "rotation",
                    "messages": args.messages,
                    "attachments": args.attachments,
                    "workers": args.workers,
                    "items": items,
                    "megabytes": round(mbytes, 1),
                    "seed_s": round(seed_s, 1),
                    "legacy_floor_s": round(legacy_s, 3),
                    "floor_s": round(floor_s, 3),
                    "rotation_s": round(rotation_s, 3),
                    "naive_s": round(naive_s, 3),
                    "rotation_items_per_s": round(items / rotation_s),
                    "rotation_mb_per_s": round(mbytes / rotation_s, 1),
                    "ratio_rotation_to_legacy_floor": round(ratio_rl, 3),
                    "ratio_rotation_to_floor": round(ratio_rf, 2),
                    "ratio_naive_to_rotation": round(ratio_nr, 2),
                    "worker_peak_rss_mb": round(peak, 1),
                    "hot_share_messages": {
                        "legacy_floor": share(legacy_hot),
                        "floor": share(floor_hot),
                        "rotation": share(rotation_hot),
                    },
                }
            )
        )
    finally:
        app.extensions["db_engine"].dispose() if "app" in locals() else None
        drop_database(base, name)
        redis.Redis.from_url(redis_url).flushdb()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
