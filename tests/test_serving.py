"""Production serving: workers yield the CPU to the web, pages never compile on a request."""

from __future__ import annotations

import os
import time

import pytest

from portal.config import Config, ConfigError
from portal.serving import warm_templates
from tests.support.faults import WorkerGroup, _session_members, private_queue, process_env


def _nice(pid: int) -> int:
    """A process's nice value, from /proc (field 19 of stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[16])


def test_rq_workers_run_at_the_configured_nice_and_the_supervisor_does_not(
    app, app_config, tmp_path
):
    private_queue(app_config)
    env = process_env(app_config, WORKER_NICE="7")
    group = WorkerGroup(env, tmp_path).start()
    try:
        base = _nice(group.proc.pid)
        deadline = time.monotonic() + 30
        niced: list[int] = []
        while time.monotonic() < deadline and not niced:
            niced = [
                pid
                for pid in _session_members(group.proc.pid)
                if pid != group.proc.pid and _nice(pid) == min(base + 7, 19)
            ]
            time.sleep(0.2)
        assert niced, f"no worker process reached nice {base + 7}:\n{group.log()}"
        assert _nice(group.proc.pid) == base  # the supervisor (and the watchdog) stay as started
        assert os.getpriority(os.PRIO_PROCESS, niced[0]) == min(base + 7, 19)
    finally:
        group.stop()


def test_serving_compiles_every_template_before_the_first_request(app):
    names = app.jinja_env.list_templates()
    assert "rotation/_progress.html" in names and len(names) > 20
    app.jinja_env.cache.clear()
    warm_templates(app)
    cached = {name for (_loader, name), _template in app.jinja_env.cache.items()}
    assert cached == set(names)


@pytest.mark.parametrize("value", ["-1", "20", "low"])
def test_an_impossible_worker_nice_is_refused_at_start(value):
    with pytest.raises(ConfigError, match="WORKER_NICE"):
        Config(env={"WORKER_NICE": value})
