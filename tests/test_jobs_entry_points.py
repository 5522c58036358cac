"""jobs/ holds only RQ entry points: portal/ never imports it, and enqueues it by name."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from flask import Flask
from rq.job import Job
from sqlalchemy import select

from portal import crypto
from portal.db import get_session
from portal.models import Organization
from portal.redis_conn import connect
from portal.rotation.models import RotationRange
from portal.rotation.queue import app_queue, enqueue_ranges
from portal.rotation.start import start_rotation
from tests.support.rotation import b64, enable_byok, seed

ROOT = Path(__file__).resolve().parent.parent
# A dotted job name in portal's source: what RQ stores and resolves in the worker.
JOB_NAME = re.compile(r"""["'](jobs\.[a-z_]+\.[a-z_]+)["']""")


def imports_of(path: Path) -> list[str]:
    """Every module a source file imports, at its top or inside functions."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


def jobs_imports(root: Path) -> dict[str, list[str]]:
    """Modules under ``root`` that import jobs (or a module of it), with what they import."""
    offenders: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        bad = [m for m in imports_of(path) if m == "jobs" or m.startswith("jobs.")]
        if bad:
            offenders[str(path.relative_to(root.parent))] = bad
    return offenders


def test_the_scan_sees_an_import_of_jobs_even_inside_a_function(tmp_path: Path) -> None:
    sample = tmp_path / "portal"
    sample.mkdir()
    (sample / "fine.py").write_text("import json\nfrom portal import db\n")
    (sample / "lazy.py").write_text("def f():\n    from jobs.rotation import watchdog\n")
    (sample / "top.py").write_text("import jobs.audit\n")
    assert jobs_imports(sample) == {
        "portal/lazy.py": ["jobs.rotation"],
        "portal/top.py": ["jobs.audit"],
    }


def test_nothing_in_portal_imports_jobs() -> None:
    assert jobs_imports(ROOT / "portal") == {}


# An entry point builds or gets the app and calls into portal: a few statements, no more.
MAX_ENTRY_STATEMENTS = 6


def fat_parts(source: str) -> list[str]:
    """What in a jobs module is more than a thin public entry point (imports and docstrings
    aside): module state, classes, private helpers and long functions."""
    found: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the module docstring
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            found.append(getattr(node, "name", None) or ast.unparse(node).split("\n")[0])
            continue
        body = node.body[1:] if ast.get_docstring(node) else node.body
        statements = sum(1 for part in body for _ in ast.walk(part) if isinstance(_, ast.stmt))
        if statements > MAX_ENTRY_STATEMENTS:
            found.append(f"{node.name} ({statements} statements)")
    return found


def test_the_thinness_check_flags_state_helpers_and_long_functions() -> None:
    sample = """
\"\"\"Jobs.\"\"\"
import uuid
_worker_pid = None
def _claim(db):
    return True
def process_range(run_id, range_id):
    \"\"\"Work.\"\"\"
    app = get_app()
    with app.app_context():
        if _claim(None):
            x = 1
            y = 2
            z = 3
            return str(x + y + z)
def watchdog(run_id):
    \"\"\"Watch.\"\"\"
    return watching.watchdog(job_app(), uuid.UUID(run_id))
"""
    assert fat_parts(sample) == ["_worker_pid = None", "_claim", "process_range (7 statements)"]


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_jobs_modules_hold_only_thin_entry_points(path: Path) -> None:
    assert fat_parts(path.read_text()) == []


def job_names() -> set[str]:
    """The dotted job names portal enqueues."""
    names: set[str] = set()
    for path in (ROOT / "portal").rglob("*.py"):
        names |= set(JOB_NAME.findall(path.read_text()))
    return names


def test_portal_enqueues_the_rotation_and_audit_jobs_by_name() -> None:
    assert {
        "jobs.rotation.process_range",
        "jobs.rotation.watchdog",
        "jobs.audit.flush_decrypt_failures",
    } <= job_names()


@pytest.mark.parametrize("name", sorted(job_names()))
def test_every_job_name_portal_enqueues_is_a_function_in_jobs(name: str) -> None:
    module, _, function = name.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function, None)), name


def test_queued_rotation_jobs_keep_the_names_and_plain_arguments_of_before(
    app: Flask, orgs: dict
) -> None:
    # Jobs already in Redis from before the move name these functions with these arguments:
    # they must go on resolving, and nothing but ids may be in them.
    org_id = orgs["a"]["id"]
    old = enable_byok(app, org_id)
    seed(app, org_id, conversations=1, messages=2, attachments=1)
    with app.app_context():
        db = get_session()
        org = db.get(Organization, org_id)
        run = start_rotation(db, org, "cli", b64(old), b64(crypto.generate_key()))
        db.commit()
        ranges = set(db.scalars(select(RotationRange.id).where(RotationRange.run_id == run.id)))
    assert enqueue_ranges(app, run.id) == len(ranges)
    queue = app_queue(app)
    jobs = [queue.fetch_job(job_id) for job_id in queue.job_ids]
    assert {(j.func_name, j.args[0]) for j in jobs} == {
        ("jobs.rotation.process_range", str(run.id))
    }
    assert {j.args[1] for j in jobs} == ranges and all(len(j.args) == 2 for j in jobs)
    watchdog = Job.fetch(
        f"rotation-watchdog-{run.id}", connection=connect(app), serializer=queue.serializer
    )
    assert (watchdog.func_name, watchdog.args) == ("jobs.rotation.watchdog", [str(run.id)])
