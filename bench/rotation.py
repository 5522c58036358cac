"""Rotation benchmark on PostgreSQL: the product's rotation against a pure-SQL floor and a
naive ORM reference, with the workers' peak memory.

    python bench/rotation.py [--messages 200000] [--attachments 2000] [--workers 2]

Needs PostgreSQL (BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test; a
throwaway database is created beside it and dropped) and Redis (BENCH_REDIS_URL, default
redis://127.0.0.1:6379/10, flushed). The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from common import (  # noqa: E402
    ATTACHMENT_BYTES,
    b64,
    create_database,
    drop_database,
    seed,
)
from sqlalchemy import select  # noqa: E402

from portal import create_app, crypto  # noqa: E402
from portal.chat.models import Attachment, Conversation, Message  # noqa: E402
from portal.chat.service import ad  # noqa: E402
from portal.db import get_session, make_engine  # noqa: E402
from portal.migrate import upgrade  # noqa: E402


def data_bytes(app) -> int:
    """Ciphertext bytes stored across the three tables."""
    with app.extensions["db_engine"].connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT (SELECT coalesce(sum(octet_length(body_ct)),0) FROM messages)"
                " + (SELECT coalesce(sum(octet_length(content_ct) + octet_length(filename_ct)),0)"
                "    FROM attachments)"
                " + (SELECT coalesce(sum(octet_length(title_ct) + octet_length(metadata_ct)),0)"
                "    FROM conversations)"
            ).scalar()
        )


def floor(app, org_id: uuid.UUID) -> float:
    """Rewrite every row in the database with no crypto: the lower bound of any rotation."""
    started = time.perf_counter()
    with app.extensions["db_engine"].begin() as conn:
        conn.exec_driver_sql(
            "UPDATE messages SET body_ct = body_ct || ''::bytea, key_id = key_id "
            "WHERE company_id = %s",
            (org_id,),
        )
        conn.exec_driver_sql(
            "UPDATE attachments SET content_ct = content_ct || ''::bytea, "
            "filename_ct = filename_ct || ''::bytea, key_id = key_id WHERE company_id = %s",
            (org_id,),
        )
        conn.exec_driver_sql(
            "UPDATE conversations SET title_ct = title_ct || ''::bytea, "
            "metadata_ct = metadata_ct || ''::bytea, key_id = key_id WHERE company_id = %s",
            (org_id,),
        )
    elapsed = time.perf_counter() - started
    with app.extensions["db_engine"].connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM messages, attachments, conversations"
        )
    return elapsed


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
    app, env: dict[str, str], org_slug: str, old: bytes, new: bytes, workers: int
) -> tuple[float, list[float], dict]:
    """Rotate with the product end to end: enqueue to verified, with real RQ workers."""
    from portal.models import Organization
    from portal.rotation.models import RotationRun
    from portal.rotation.progress import progress as run_progress
    from portal.rotation.queue import enqueue_ranges
    from portal.rotation.start import start_rotation

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "portal.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(workers)
    ]
    sampler = RssSampler([p.pid for p in procs])
    sampler.start()
    time.sleep(2.0)  # workers up before the clock starts
    started = time.perf_counter()
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == org_slug))
        run = start_rotation(db, org, "bench", b64(old), b64(new))
        db.commit()
        run_id = run.id
    enqueue_ranges(app, run_id)
    state = "running"
    while state not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)
        with app.extensions["db_engine"].connect() as conn:
            state = conn.execute(
                select(RotationRun.state).where(RotationRun.id == run_id)
            ).scalar_one()
    elapsed = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    with app.app_context():
        db = get_session()
        info = run_progress(db, db.get(RotationRun, run_id)).as_json()
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)
    if state != "completed":
        raise SystemExit(f"rotation ended {state}: {info}")
    return elapsed, [v / 1e6 for v in sampler.peak.values()], info


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
            while True:
                batch = list(
                    db.scalars(
                        select(model)
                        .where(model.company_id == org_id, model.key_id == old_id)
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
                db.commit()
                db.expunge_all()
    return time.perf_counter() - started


def main() -> None:
    """Seed, then measure floor, product rotation and naive reference in one run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--attachments", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
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
        print(
            f"seeded {args.messages} messages, {args.attachments} attachments of "
            f"{ATTACHMENT_BYTES // 1024} KiB in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        items = args.messages + args.attachments + max(1, args.messages // 50)
        mbytes = data_bytes(app) / 1e6
        floor_s = floor(app, org_id)
        rotation_s, rss, info = product_rotation(app, env, slug, key1, key2, args.workers)
        naive_s = naive(app, org_id, key2, key3)
        rows = [
            ("floor (pure SQL rewrite)", floor_s),
            (f"rotation ({args.workers} workers)", rotation_s),
            ("naive ORM", naive_s),
        ]
        print(f"{'':28} {'seconds':>9} {'items/s':>11} {'MB/s':>9}")
        for label, secs in rows:
            print(f"{label:28} {secs:9.2f} {items / secs:11.0f} {mbytes / secs:9.1f}")
        ratio_rf = rotation_s / floor_s
        ratio_nr = naive_s / rotation_s
        print(
            f"rotation / floor = {ratio_rf:.2f} (target <= 3, aim 2); "
            f"naive / rotation = {ratio_nr:.2f} (target >= 5)"
        )
        print(f"worker peak RSS: {', '.join(f'{r:.0f} MB' for r in rss)} (target <= 200 MB)")
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
                    "floor_s": round(floor_s, 3),
                    "rotation_s": round(rotation_s, 3),
                    "naive_s": round(naive_s, 3),
                    "rotation_items_per_s": round(items / rotation_s),
                    "rotation_mb_per_s": round(mbytes / rotation_s, 1),
                    "ratio_rotation_to_floor": round(ratio_rf, 2),
                    "ratio_naive_to_rotation": round(ratio_nr, 2),
                    "worker_peak_rss_mb": round(max(rss), 1),
                }
            )
        )
    finally:
        app.extensions["db_engine"].dispose() if "app" in locals() else None
        drop_database(base, name)
        redis.Redis.from_url(redis_url).flushdb()


if __name__ == "__main__":
    main()
