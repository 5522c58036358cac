"""Rotation under real faults: SIGKILLed workers, a Redis that loses everything, a wrong key.

Every worker here is a real ``python -m portal.cli worker`` process (RQ forks a work-horse per
job), every Redis a real redis-server; nothing is simulated. Kill points are random but
reproducible: each test prints its seed, and FAULT_SEED=<seed> replays it.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import make_url

from portal import crypto
from portal.db import get_session
from portal.keys.models import OrgKey
from portal.rotation.models import RotationFailure
from portal.rotation.progress import progress as run_progress
from portal.rotation.queue import enqueue_ranges
from tests.support.faults import (
    PrivateRedis,
    assert_rotated_intact,
    bulk_seed,
    cli,
    diagnose,
    done_items,
    private_queue,
    process_env,
    ranges,
    raw_digest,
    run_row,
    set_throttle,
    start_run,
    wait_for,
    wait_for_end,
    worker_groups,
)
from tests.support.rotation import b64, enable_byok, plaintext_digest

MESSAGES = 20_000
CONVERSATIONS = 60
ATTACHMENTS = 40


@pytest.fixture(autouse=True)
def own_queue(app_config):
    """An RQ queue of this test's own (set before the app is built)."""
    return private_queue(app_config)


@pytest.fixture
def rng(request) -> random.Random:
    """A seeded random source; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"\n{request.node.name}: random seed {seed} (FAULT_SEED={seed} replays it)")
    return random.Random(seed)


@pytest.fixture
def workers(app, tmp_path):
    """Start worker groups; every one still running is SIGKILLed at the end."""
    with worker_groups(tmp_path) as start:
        yield start


@pytest.fixture
def seeded(app, orgs):
    """Org A with BYOK on and 20,000 messages plus conversations and attachments; org B too."""
    org_a, org_b = orgs["a"]["id"], orgs["b"]["id"]
    old = enable_byok(app, org_a)
    started = time.monotonic()
    bulk_seed(app, org_a, MESSAGES, CONVERSATIONS, ATTACHMENTS)
    bulk_seed(app, org_b, 200, 5, 2)
    print(f"seeded {MESSAGES} messages in {time.monotonic() - started:.1f}s")
    return {
        "org": org_a,
        "other": org_b,
        "old": old,
        "new": crypto.generate_key(),
        "before": plaintext_digest(app, org_a),
        "other_before": raw_digest(app, org_b),
    }


def _start(app, seeded, throttle: float | None) -> object:
    """Start the rotation through the service layer and queue its ranges."""
    run_id = start_run(app, seeded["org"], seeded["old"], seeded["new"])
    if throttle:
        set_throttle(app, run_id, throttle)
    enqueue_ranges(app, run_id)
    return run_id


def _assert_intact(app, env, seeded, run_id) -> None:
    """The run completed with nothing lost or changed, and org B was never touched."""
    assert_rotated_intact(
        app, env, seeded["org"], run_id, seeded["old"], seeded["new"], seeded["before"]
    )
    assert raw_digest(app, seeded["other"]) == seeded["other_before"]


@pytest.mark.slow
def test_rotation_completes_after_workers_are_killed_at_random_points(
    app, app_config, seeded, workers, rng
):
    env = process_env(app_config)
    # Throttled to ~3,000 items/s so that the run spans every kill below.
    run_id = _start(app, seeded, throttle=15)
    worker = workers(env)
    kills = []
    for _ in range(4):
        if run_row(app, run_id).state != "running":
            break
        base = done_items(app, run_id)
        wait_for(
            "the (re)started worker to move items",
            lambda base=base: done_items(app, run_id) > base,
            timeout=25,
            on_timeout=lambda worker=worker: diagnose(app, run_id) + worker.log()[-2000:],
        )
        time.sleep(rng.uniform(0.05, 1.2))
        worker.kill()
        kills.append(done_items(app, run_id))
        print(f"SIGKILL #{len(kills)} with {kills[-1]} items checkpointed")
        worker = workers(env)
    assert len(kills) >= 3, f"the run ended before the kills: {kills}"
    run = wait_for_end(app, run_id, timeout=40, describe=lambda: worker.log()[-2000:])
    assert run.state == "completed", diagnose(app, run_id)
    _assert_intact(app, env, seeded, run_id)


@pytest.fixture
def private_redis(app_config, tmp_path):
    """A redis-server of this test's own, with no persistence: a restart loses every job."""
    server = PrivateRedis(tmp_path / "redis").start()
    app_config["REDIS_URL"] = server.url
    yield server
    server.kill()


def _outage_across_a_slice_end(app, run_id, private_redis, worker, rng) -> None:
    """Stop Redis while the message range runs and bring back an empty one only after the job
    working it reached its slice end: its re-queue of the next slice and the watchdog are lost,
    so nothing in Redis carries the run any more."""

    def only_messages_left() -> bool:
        state = {r.kind: r for r in ranges(app, run_id)}
        return (
            state["attachments"].state == "done"
            and state["metadata"].state == "done"
            and state["messages"].state == "running"
            and state["messages"].done >= 1000
        )

    wait_for("the run to be under way", only_messages_left, 25, on_timeout=worker.log)
    time.sleep(rng.uniform(0.0, 1.0))
    private_redis.mark()
    private_redis.kill()
    wait_for(
        "the busy job to reach its slice end (and fail to queue the next slice)",
        lambda: [r.state for r in ranges(app, run_id) if r.kind == "messages"] == ["pending"],
        timeout=10,
        on_timeout=lambda: diagnose(app, run_id),
    )
    time.sleep(rng.uniform(0.2, 1.0))
    private_redis.start()
    # The live worker may register in the new server at once, so "empty" is checked by a key
    # only the old server held.
    assert not private_redis.marked(), "the new Redis must start empty"


def _workers_ready(private_redis, queue: str, count: int) -> None:
    """Wait until ``count`` RQ workers listen on the queue."""
    conn = redis.Redis.from_url(private_redis.url)
    wait_for(f"{count} workers", lambda: conn.scard(f"rq:workers:{queue}") >= count, 20)


@pytest.mark.slow
def test_rotation_survives_a_redis_restart_that_loses_every_job_via_rotation_resume(
    private_redis, app, app_config, own_queue, seeded, workers, rng
):
    """Redis is away across a slice boundary; ``rotation resume`` rebuilds the queue from the
    database and the worker that was idle meanwhile (RQ retries its connection) finishes."""
    env = process_env(app_config)
    assert env["REDIS_URL"] == private_redis.url
    # Workers first, so that none queues the run at start-up: the CLI alone must revive it.
    worker = workers(env, count=2)
    _workers_ready(private_redis, own_queue, 2)
    run_id = _start(app, seeded, throttle=15)
    _outage_across_a_slice_end(app, run_id, private_redis, worker, rng)
    assert worker.alive, "no worker survived the Redis outage:\n" + worker.log()[-3000:]
    stalled_at = done_items(app, run_id)
    time.sleep(2)
    print(f"Redis restarted; {stalled_at} -> {done_items(app, run_id)} items in 2 s before resume")
    resumed = cli(env, "rotation", "resume", str(run_id))
    assert resumed.returncode == 0, resumed.stderr
    # Workers now also re-queue from the database when Redis comes back, so the range may
    # already be taken again by the time the command runs: it queues what is still pending.
    assert re.search(rf"run {run_id} is running; \d+ ranges queued", resumed.stdout)
    run = wait_for_end(app, run_id, timeout=40, describe=lambda: worker.log()[-3000:])
    assert run.state == "completed", diagnose(app, run_id)
    _assert_intact(app, env, seeded, run_id)


@pytest.mark.slow
def test_a_worker_busy_with_a_range_outlives_a_redis_restart_and_finishes_the_run(
    private_redis, app, app_config, own_queue, seeded, workers, rng
):
    env = process_env(app_config)
    worker = workers(env)
    _workers_ready(private_redis, own_queue, 1)
    run_id = _start(app, seeded, throttle=15)
    _outage_across_a_slice_end(app, run_id, private_redis, worker, rng)
    time.sleep(3)
    assert worker.alive, "the worker exited during the Redis outage"
    resumed = cli(env, "rotation", "resume", str(run_id))
    # The worker reconnects and re-queues by itself; it may have finished the run already.
    assert resumed.returncode == 0 or "is completed" in resumed.stderr, resumed.stderr
    run = wait_for_end(app, run_id, timeout=40, describe=lambda: worker.log()[-3000:])
    assert run.state == "completed", diagnose(app, run_id)
    _assert_intact(app, env, seeded, run_id)


@pytest.mark.slow
def test_rotation_survives_a_redis_restart_that_loses_every_job_via_a_worker_restart(
    private_redis, app, app_config, seeded, workers, rng
):
    """The host goes down (Redis and workers SIGKILLed); a fresh, empty Redis and a new
    worker: the worker rebuilds the queue from the database by itself and completes the run."""
    env = process_env(app_config)
    run_id = _start(app, seeded, throttle=15)
    worker = workers(env)
    wait_for(
        "the worker to move items",
        lambda: done_items(app, run_id) >= 1000,
        timeout=25,
        on_timeout=worker.log,
    )
    time.sleep(rng.uniform(0.0, 1.0))
    worker.kill()
    private_redis.kill()
    private_redis.start()
    assert private_redis.keys() == [], "the new Redis must start empty"
    print(f"Redis and worker restarted with {done_items(app, run_id)} items checkpointed")
    worker = workers(env)
    wait_for(
        "the new worker to rebuild the queue from the database",
        lambda: f"resumed rotation runs: {run_id}" in worker.log(),
        timeout=20,
        on_timeout=worker.log,
    )
    run = wait_for_end(app, run_id, timeout=40, describe=lambda: worker.log()[-3000:])
    assert run.state == "completed", diagnose(app, run_id)
    _assert_intact(app, env, seeded, run_id)


def _session_of(pid: int) -> int | None:
    """The session id of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[3])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


@contextmanager
def writes_blocked(app):
    """Hold a lock that makes every rotation write wait: a batch read before it stays in flight.

    Yields a function that tells whether a rotation batch is waiting on the lock (PostgreSQL
    shows it in pg_stat_activity; SQLite cannot tell, so it answers after a grace period).
    """
    url = make_url(app.config["DATABASE_URL"])
    if url.get_backend_name() == "postgresql":
        import psycopg

        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as conn:
            conn.execute("LOCK TABLE messages IN EXCLUSIVE MODE")  # reads still work

            def waiting() -> int:
                with psycopg.connect(dsn, autocommit=True) as probe:
                    return probe.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE messages%%'"
                    ).fetchone()[0]

            try:
                yield waiting
            finally:
                conn.rollback()
    else:
        conn = sqlite3.connect(url.database, timeout=30, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the one write lock; WAL readers go on reading
        held_since = time.monotonic()
        try:
            yield lambda: time.monotonic() - held_since > 1.5
        finally:
            conn.execute("ROLLBACK")
            conn.close()


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing_and_the_range_is_taken_over(
    app, app_config, orgs, own_queue, workers
):
    org = orgs["a"]["id"]
    old, new = enable_byok(app, org), crypto.generate_key()
    bulk_seed(app, org, 30_000, CONVERSATIONS, ATTACHMENTS)  # two message ranges
    seeded = {"org": org, "other": orgs["b"]["id"], "old": old, "new": new}
    seeded["before"] = plaintext_digest(app, org)
    seeded["other_before"] = raw_digest(app, seeded["other"])
    env = process_env(app_config)
    conn = redis.Redis.from_url(app_config["REDIS_URL"])
    # The rescuer starts first, so it runs the RQ scheduler (and with it the watchdog).
    rescuer = workers(env, "rescuer")
    wait_for("the rescuer's scheduler", lambda: conn.get(f"rq:scheduler-lock:{own_queue}"), 20)
    victim = workers(env, "victim")
    wait_for("both workers", lambda: conn.scard(f"rq:workers:{own_queue}") >= 2, 20)
    run_id = _start(app, seeded, throttle=10)

    def victims_range():
        for r in ranges(app, run_id):
            mine = r.worker and _session_of(int(r.worker.split(":")[1])) == victim.proc.pid
            if r.kind == "messages" and r.state == "running" and r.done and mine:
                return r
        return None

    held = wait_for("the victim to work a message range", victims_range, timeout=30)
    with writes_blocked(app) as batch_waiting:
        wait_for("a batch to wait on the lock, rows in hand", batch_waiting, timeout=10)
        time.sleep(0.3)  # the victim's next batch starts within 0.1 s (throttle 10/s)
        at_kill = next(r for r in ranges(app, run_id) if r.id == held.id)
        assert at_kill.state == "running" and at_kill.worker == held.worker
        victim.kill()
    print(f"victim killed mid-batch on range {held.id} at {at_kill.done} items")
    run = wait_for_end(app, run_id, timeout=45, describe=lambda: rescuer.log()[-3000:])
    assert run.state == "completed", diagnose(app, run_id)
    after = next(r for r in ranges(app, run_id) if r.id == held.id)
    # Taken over by another worker (through the watchdog, whichever process ran it).
    assert after.state == "done" and after.attempts > at_kill.attempts, diagnose(app, run_id)
    assert rescuer.alive
    _assert_intact(app, env, seeded, run_id)


def _key_rows(app, org) -> list[tuple]:
    """The organisation's key rows: id, state and sealed bytes."""
    with app.app_context():
        rows = get_session().execute(
            select(OrgKey.key_id, OrgKey.state, OrgKey.sealed).where(OrgKey.company_id == org)
        )
        return sorted((k, s, bytes(b) if b else None) for k, s, b in rows)


@pytest.mark.slow
def test_a_worker_with_the_wrong_master_key_changes_nothing_and_a_right_one_completes(
    app, app_config, orgs, workers
):
    org = orgs["a"]["id"]
    old, new = enable_byok(app, org), crypto.generate_key()
    bulk_seed(app, org, 3_000, 20, 10)
    seeded = {"org": org, "other": orgs["b"]["id"], "old": old, "new": new}
    seeded["before"] = plaintext_digest(app, org)
    seeded["other_before"] = raw_digest(app, seeded["other"])
    run_id = _start(app, seeded, throttle=None)
    raw_before, keys_before = raw_digest(app, org), _key_rows(app, org)
    wrong_master = b64(crypto.generate_key())
    assert wrong_master != app_config["BYOK_MASTER_KEY"]
    wrong = workers(process_env(app_config, BYOK_MASTER_KEY=wrong_master), "wrong-master-key")
    # The wrong worker takes every range, cannot unseal the keys, hands it back; the watchdog
    # queues it again: several attempts each, and nothing may change meanwhile.
    wait_for(
        "the wrong-key worker to try every range twice",
        lambda: all(r.attempts >= 2 for r in ranges(app, run_id)),
        timeout=30,
        on_timeout=lambda: diagnose(app, run_id) + wrong.log()[-2000:],
    )
    assert run_row(app, run_id).state == "running"
    assert done_items(app, run_id) == 0
    with app.app_context():
        assert get_session().scalar(select(RotationFailure.id)) is None
        assert run_progress(get_session(), run_row(app, run_id)).failed == 0
    assert raw_digest(app, org) == raw_before, "a worker with the wrong master key wrote data"
    assert _key_rows(app, org) == keys_before, "a worker with the wrong master key changed keys"
    wrong.stop()
    env = process_env(app_config)
    right = workers(env, "right-master-key")
    run = wait_for_end(app, run_id, timeout=40, describe=lambda: right.log()[-3000:])
    assert run.state == "completed", diagnose(app, run_id)
    _assert_intact(app, env, seeded, run_id)
