"""A throttled rotation waits between batches outside any transaction (PostgreSQL).

A sleep inside an open transaction leaves the backend `idle in transaction`: it holds a
snapshot (VACUUM cannot clean behind it), and a connection dropped meanwhile kills the job.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy.engine import make_url

from portal import crypto
from portal.rotation.queue import enqueue_ranges
from tests.support.faults import (
    bulk_seed,
    diagnose,
    done_items,
    private_queue,
    process_env,
    set_throttle,
    start_run,
    wait_for,
    worker_groups,
)
from tests.support.rotation import enable_byok

APP_NAME = "byok-idle-tx-worker"
# A batch's own work between its read and its write (200 small messages) takes milliseconds;
# a throttled wait of 2 s (0.5 batches/s) is what the old code spent in the transaction.
LONGEST_IDLE_IN_TRANSACTION = 1.0


def _dsn(app) -> str:
    """A libpq connection string for the test database."""
    url = make_url(app.config["DATABASE_URL"]).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _worker_backends(probe: psycopg.Connection) -> list[tuple]:
    """The worker's backends: pid, state, seconds in that state, last query."""
    return probe.execute(
        "SELECT pid, state, extract(epoch FROM clock_timestamp() - state_change), query"
        " FROM pg_stat_activity WHERE application_name = %s",
        (APP_NAME,),
    ).fetchall()


def test_a_throttled_worker_never_sleeps_inside_a_transaction(
    services, app, app_config, orgs, tmp_path
):
    if not services.is_postgres:
        pytest.skip("pg_stat_activity is PostgreSQL's; SQLite reads hold no transaction open")
    private_queue(app_config)
    org = orgs["a"]["id"]
    old = enable_byok(app, org)
    bulk_seed(app, org, 4_000, 20, 10)
    run_id = start_run(app, org, old, crypto.generate_key())
    set_throttle(app, run_id, 0.5)
    enqueue_ranges(app, run_id)
    # libpq names the worker's connections, so only its backends are sampled.
    env = process_env(app_config, PGAPPNAME=APP_NAME)
    with worker_groups(tmp_path) as start, psycopg.connect(_dsn(app), autocommit=True) as probe:
        worker = start(env)
        wait_for("the worker's first batch", lambda: done_items(app, run_id), 30, 0.1, worker.log)
        first = done_items(app, run_id)
        longest, seen, where = 0.0, set(), ""
        until = time.monotonic() + 8
        while time.monotonic() < until:
            for pid, state, seconds, query in _worker_backends(probe):
                seen.add(pid)
                if state == "idle in transaction" and float(seconds) > longest:
                    longest, where = float(seconds), query
            time.sleep(0.05)
        moved = done_items(app, run_id) - first
    print(f"longest idle in transaction: {longest:.2f} s over {len(seen)} backends")
    assert seen, "no backend of the worker was seen"
    assert moved >= 400, f"too few batches ran while sampling ({moved} items)\n" + diagnose(
        app, run_id
    )
    assert longest < LONGEST_IDLE_IN_TRANSACTION, (
        f"a worker backend stayed idle in transaction for {longest:.2f} s after: {where}"
    )
