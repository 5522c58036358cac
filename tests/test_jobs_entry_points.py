"""jobs/ holds only RQ entry points: portal/ never imports it, and enqueues it by name."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

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
