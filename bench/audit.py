"""Audit Log benchmark on PostgreSQL: the filter view's query and chain verification.

    python bench/audit.py [--events 1000000] [--orgs 20] [--runs 50]

Needs PostgreSQL (BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test; a
throwaway database is created beside it, migrated and dropped afterwards). Events are seeded
with COPY as real hash chains (portal.events.event_hash over the same fields emit() hashes),
with signed chain heads, so verify_chain checks genuine chains.

Timed: the view's own database work (portal.audit.filters.load_page: the page query, plus the
"is there a newer page" probe when paging), warm, 50 runs per filter with a random
organisation and values; half the runs page from a random event of that organisation. Date
ranges are 1 to 31 days anywhere in the seeded year; "action" includes two rare actions. Also
timed: verifying an organisation's chain (portal.audit.chain.verify_chain; three organisations,
each once, median and slowest printed) and streaming one organisation's whole JSON Lines
export (rows per second, and the peak Python memory of the stream). The last line is a JSON
object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import create_database, drop_database  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from portal.audit import export  # noqa: E402
from portal.audit.filters import AuditFilter, load_page, page_query, parse_filters  # noqa: E402
from portal.db import make_engine  # noqa: E402
from portal.events import GENESIS, event_hash, sign_head  # noqa: E402
from portal.migrate import upgrade  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
# (action, outcome, weight): sign-ins dominate, key events and failures are rarer, and two
# actions are rare enough (0.2 per 100) to make a specific-action filter search far.
MIX = (
    ("auth.login", "success", 40),
    ("auth.logout", "success", 15),
    ("auth.login_failed", "failure", 6),
    ("auth.access_denied", "denied", 3),
    ("BYOK.key_test", "success", 6),
    ("BYOK.key_test", "failure", 2),
    ("BYOK.enabled", "success", 3),
    ("BYOK.rotation_started", "success", 3),
    ("BYOK.rotation_completed", "success", 3),
    ("BYOK.key_generated", "success", 3),
    ("encryption_key.decrypt_failed", "failure", 10),
    ("encryption_key.restored", "success", 2),
    ("audit.exported", "success", 4),
    ("auth.reauth_failed", "failure", 0.2),
    ("BYOK.key_retired", "success", 0.2),
)
ALL = AuditFilter()
# Not in the migrations (yet): without it a rare action is searched for through its category.
KINDS = ("category", "action", "actor", "date_range", "no_filter")
WARMUP = 5
COPY_COLUMNS = (
    "chain_id", "seq", "company_id", "occurred_at", "actor_type", "actor_id", "actor_label",
    "action", "category", "outcome", "source_ip", "user_agent", "details", "prev_hash", "hash",
)  # fmt: skip


@dataclass
class Org:
    """A seeded organisation, its actors and the head of its chain while seeding."""

    id: uuid.UUID
    actors: list[tuple[str, str | None, str]]
    seq: int = 0
    head: str = GENESIS
    ids: list[int] = field(default_factory=list)


def _actors(org_index: int) -> list[tuple[str, str | None, str]]:
    """An organisation's actors: a dozen users, the CLI, the system and two API tokens."""
    users = [("user", str(uuid.uuid4()), f"user{n}@org{org_index}.example") for n in range(12)]
    tokens = [("api_token", str(uuid.uuid4()), f"token:ingest-{n}") for n in range(2)]
    return users + tokens + [("cli", None, "cli"), ("system", None, "system")]


def seed(engine, events: int, orgs: int, signing_key: bytes) -> list[Org]:
    """COPY ``events`` events spread over a year and ``orgs`` organisations, as real chains."""
    rng = random.Random(7)
    found = [Org(uuid.uuid4(), _actors(i)) for i in range(orgs)]
    owners = [i % orgs for i in range(events)]
    rng.shuffle(owners)
    kinds = [(a, o) for a, o, _ in MIX]
    weights = [w for _, _, w in MIX]
    step = SPAN / events
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            for i, org in enumerate(found):
                cur.execute(
                    "INSERT INTO organizations (id, name, slug, tier, rotation_period_days, "
                    "created_at) VALUES (%s, %s, %s, 'org_community', 90, now())",
                    (org.id, f"Bench Org {i}", f"bench-org-{i}"),
                )
            with cur.copy(f"COPY audit_events ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy:
                for n, owner in enumerate(owners):
                    org = found[owner]
                    actor_type, actor_id, label = rng.choice(org.actors)
                    action, outcome = rng.choices(kinds, weights)[0]
                    ev = SimpleNamespace(
                        chain_id=org.id,
                        seq=org.seq + 1,
                        company_id=org.id,
                        occurred_at=START + step * n,
                        actor_type=actor_type,
                        actor_id=actor_id,
                        actor_label=label,
                        action=action,
                        category=action.split(".", 1)[0],
                        outcome=outcome,
                        source_ip=f"10.{owner}.{n % 250}.{n % 200 + 1}",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64) bench",
                        details=json.dumps({"n": n}, separators=(",", ":")),
                        prev_hash=org.head,
                    )
                    ev.hash = event_hash(ev)
                    org.seq, org.head = ev.seq, ev.hash
                    org.ids.append(n + 1)  # a fresh sequence numbers COPY rows from 1
                    copy.write_row([getattr(ev, name) for name in COPY_COLUMNS])
            for org in found:
                cur.execute(
                    "INSERT INTO audit_heads (chain_id, seq, hash, signature) "
                    "VALUES (%s, %s, %s, %s)",
                    (org.id, org.seq, org.head, sign_head(signing_key, org.id, org.seq, org.head)),
                )
        raw.commit()
    finally:
        raw.close()
    # What autovacuum does to an append-only table: statistics and a visibility map. Then a
    # checkpoint, so the timings below do not pay for writing out the seed's dirty pages.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE audit_events"))
        conn.execute(text("CHECKPOINT"))
    return found


def _params(kind: str, org: Org, rng: random.Random) -> dict[str, str]:
    """Random query arguments of one filter kind; half the runs page from a random event."""
    args: dict[str, str] = {}
    if kind == "category":
        args["type"] = rng.choice(("BYOK", "encryption_key", "auth", "audit"))
    elif kind == "action":
        args["type"] = rng.choice(MIX)[0]
    elif kind == "actor":
        args["actor"] = rng.choice(org.actors)[2]
    elif kind == "date_range":
        first = START.date() + timedelta(days=rng.randrange(365))
        args["from"] = first.isoformat()
        args["to"] = min(first + timedelta(days=rng.randrange(31)), date(2025, 12, 31)).isoformat()
    if rng.random() < 0.5:
        args["before"] = str(rng.choice(org.ids))
    return args


def time_filters(engine, found: list[Org], runs: int) -> dict[str, list[float]]:
    """Time the view's page query (filters.load_page) for each filter kind, in milliseconds."""
    rng = random.Random(11)
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with Session(engine) as session:
        for kind in KINDS:
            for run in range(runs + WARMUP):
                org = rng.choice(found)
                f = parse_filters(_params(kind, org, rng))
                assert not f.errors, f.errors
                began = time.perf_counter()
                load_page(session, org.id, f)
                elapsed = (time.perf_counter() - began) * 1000
                session.rollback()
                session.expunge_all()
                if run >= WARMUP:
                    timings[kind].append(elapsed)
    return timings


def explain(engine, org: Org) -> None:
    """Print the plan PostgreSQL picks for one query of each filter kind."""
    rng = random.Random(3)
    for kind in KINDS:
        args = _params(kind, org, rng)
        query = page_query(org.id, parse_filters(args))
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}")).scalars().all()
        print(f"-- {kind} {args}")
        print("\n".join(f"   {line}" for line in plan[:8]))


def time_verify(engine, org: Org, signing_key: bytes) -> float:
    """Verify one organisation's chain with portal.audit.chain.verify_chain; events per second."""
    from portal.audit.chain import verify_chain

    with Session(engine) as session:
        began = time.perf_counter()
        result = verify_chain(session, org.id, signing_key)
        elapsed = time.perf_counter() - began
    assert result.ok, f"verification failed: {result}"
    print(f"verified {result.checked} events of org {org.id} in {elapsed:.2f} s")
    return result.checked / elapsed


def time_export(engine, org: Org) -> tuple[int, int]:
    """Stream one organisation's whole JSON Lines export: rows per second, peak KiB."""
    upto = max(org.ids)
    began = time.perf_counter()
    size = sum(len(chunk) for chunk in export.jsonl_rows(export.stream(engine, org.id, ALL, upto)))
    rate = round(len(org.ids) / (time.perf_counter() - began))
    tracemalloc.start()
    for _ in export.jsonl_rows(export.stream(engine, org.id, ALL, upto)):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert size > 0
    return rate, round(peak / 1024)


def _pct(values: list[float], q: int) -> float:
    """The q-th percentile of a list (inclusive method), rounded to 0.01 ms."""
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


def main() -> None:
    """Seed, time, print the figures, drop the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="print each filter's plan")
    opts = parser.parse_args()
    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    url, name = create_database(base)
    engine = make_engine(url)
    try:
        upgrade(engine)
        signing_key = secrets.token_bytes(32)
        began = time.perf_counter()
        found = seed(engine, opts.events, opts.orgs, signing_key)
        seeded = time.perf_counter() - began
        print(f"seeded {opts.events} events in {opts.orgs} organisations in {seeded:.1f} s")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT min(id) FROM audit_events")) == 1
        if opts.explain:
            explain(engine, found[0])
        timings = time_filters(engine, found, opts.runs)
        figures: dict = {"events": opts.events, "orgs": opts.orgs, "runs": opts.runs}
        figures["filter_p50_ms"] = {k: _pct(v, 50) for k, v in timings.items()}
        figures["filter_p95_ms"] = {k: _pct(v, 95) for k, v in timings.items()}
        for kind in KINDS:
            p50, p95 = figures["filter_p50_ms"][kind], figures["filter_p95_ms"][kind]
            worst = max(timings[kind])
            print(f"filter {kind:<10} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  max {worst:7.2f} ms")
        # Three organisations, each verified once (its chain read for the first time): the
        # figure is the median, and the slowest is printed beside it.
        rates = sorted(time_verify(engine, org, signing_key) for org in found[:3])
        rate = rates[1]
        print(f"verify: median {rate:.0f} events/s, slowest {rates[0]:.0f} events/s")
        figures["export_rows_per_s"], figures["export_peak_kib"] = time_export(engine, found[0])
        print(
            f"export of {len(found[0].ids)} events: {figures['export_rows_per_s']} rows/s, "
            f"peak {figures['export_peak_kib']} KiB"
        )
        figures["verify_events_per_s"] = round(rate)
        figures["verify_slowest_events_per_s"] = round(rates[0])
        figures["targets_met"] = bool(
            max(figures["filter_p95_ms"].values()) <= 50 and rate >= 50_000
        )
    finally:
        engine.dispose()
        drop_database(base, name)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
