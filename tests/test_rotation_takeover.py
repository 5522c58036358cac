"""A range whose worker is SIGKILLed moves again within seconds, not after it goes stale.

The worker supervisor (``byok-portal worker``) sees its worker process die, and a worker
process sees its job process (RQ's work-horse) die: either hands that process's ranges back
at once and queues them again. Timings are production's (a range goes stale after 30 s), so
only that immediate release can meet the target.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from portal import crypto
from portal.rotation.queue import enqueue_ranges
from tests.support.faults import (
    assert_rotated_intact,
    bulk_seed,
    diagnose,
    private_queue,
    process_env,
    ranges,
    set_throttle,
    start_run,
    wait_for,
    wait_for_end,
    worker_groups,
)
from tests.support.rotation import enable_byok, plaintext_digest

TAKEOVER_SECONDS = 5.0
PRODUCTION_TIMINGS = {
    "ROTATION_STALE_SECONDS": "30",
    "ROTATION_WATCHDOG_SECONDS": "5",
    "ROTATION_SLICE_SECONDS": "30",
}


@pytest.fixture(autouse=True)
def own_queue(app_config):
    """An RQ queue of this test's own, and the messages in one range (so the other worker
    is idle when the busy one is killed, as a spare worker would be): set before the app
    is built."""
    return private_queue(app_config)


@pytest.fixture
def workers(app, tmp_path):
    """Start worker groups; every one still running is SIGKILLed at the end."""
    with worker_groups(tmp_path) as start:
        yield start


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts as gone: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _parent(pid: int) -> int:
    """The parent pid of a live process."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _busy_message_range(app, run_id):
    """The message range once it is under way and the short ranges are done (so the other
    worker process is idle, as a spare worker would be)."""
    rows = ranges(app, run_id)
    messages = next(r for r in rows if r.kind == "messages")
    others_done = all(r.state == "done" for r in rows if r.kind != "messages")
    if others_done and messages.state == "running" and messages.done >= 400 and messages.worker:
        return messages
    return None


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker process and its job", "job process only"])
def test_a_killed_workers_range_moves_again_within_seconds(app, app_config, orgs, workers, victim):
    org = orgs["a"]["id"]
    old, new = enable_byok(app, org), crypto.generate_key()
    bulk_seed(app, org, 20_000, 60, 40)
    before = plaintext_digest(app, org)
    run_id = start_run(app, org, old, new)
    set_throttle(app, run_id, 5)  # ~1,000 messages/s per worker: the range spans the kill
    enqueue_ranges(app, run_id)
    env = process_env(app_config, **PRODUCTION_TIMINGS)
    group = workers(env, count=2)
    held = wait_for(
        "a worker to be busy with the message range",
        lambda: _busy_message_range(app, run_id),
        timeout=40,
        on_timeout=lambda: diagnose(app, run_id) + group.log()[-3000:],
    )
    # A claim ends with the job process's pid and a nonce; RQ forked that job process.
    job_pid = int(held.worker.split(":")[-2])
    worker_pid = _parent(job_pid)
    assert worker_pid != group.proc.pid, "the supervisor itself must not run jobs"
    killed = [job_pid] if victim == "job process only" else [worker_pid, job_pid]
    claims = next(r for r in ranges(app, run_id) if r.id == held.id).attempts
    killed_at = time.monotonic()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_for(f"processes {killed} to die", lambda: all(_gone(p) for p in killed), timeout=10)
    time.sleep(0.2)  # a commit the dead process had already sent lands before the baseline
    at_kill = next(r for r in ranges(app, run_id) if r.id == held.id)

    def moving_again():
        now = next(r for r in ranges(app, run_id) if r.id == held.id)
        # Claimed anew since the kill (the release can be that quick), and moved since the
        # dead process's last commit.
        return now.attempts > claims and (now.done > at_kill.done or now.state == "done")

    wait_for(
        "the range to move again",
        moving_again,
        timeout=60,
        interval=0.05,
        on_timeout=lambda: diagnose(app, run_id) + group.log()[-3000:],
    )
    took = time.monotonic() - killed_at
    print(f"\nSIGKILL of the {victim} ({killed}) -> range {held.id} moving again: {took:.2f} s")
    assert took <= TAKEOVER_SECONDS, diagnose(app, run_id) + group.log()[-3000:]
    assert group.alive, "the supervisor died with its worker"
    set_throttle(app, run_id, None)
    run = wait_for_end(app, run_id, timeout=60, describe=lambda: group.log()[-3000:])
    assert run.state == "completed", diagnose(app, run_id)
    assert_rotated_intact(app, env, org, run_id, old, new, before)
