"""The tests read as a suite: no test module imports another, helpers live in tests/support/,
and no test file grows past what one can read in a sitting (600 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MAX_LINES = 600


def suite_modules() -> list[Path]:
    """Every Python file of the suite outside tests/support/ (test modules and conftest)."""
    return sorted(p for p in TESTS.rglob("*.py") if "support" not in p.relative_to(TESTS).parts)


def imported_modules(source: str, package: str = "tests") -> list[str]:
    """The dotted names a module imports, anywhere in it (lazy imports inside functions too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the tests package
                base = f"{package}.{base}" if base else package
                names += [f"{base}.{alias.name}" for alias in node.names if not node.module]
            names.append(base)
    return names


def cross_test_imports(source: str) -> list[str]:
    """The test modules (or conftest) that a source imports from: none is allowed."""
    found = []
    for name in imported_modules(source):
        parts = name.split(".")
        if (
            parts[0] == "tests"
            and len(parts) > 1
            and (parts[1].startswith("test_") or parts[1] == "conftest")
        ):
            found.append(name)
    return found


def too_long(path: Path) -> int | None:
    """The line count of a file over the limit, or None."""
    count = len(path.read_text(encoding="utf-8").splitlines())
    return count if count > MAX_LINES else None


def test_no_test_module_imports_another_test_module():
    """Shared code reaches tests as fixtures or from tests/support/, never from a test file."""
    offenders = {
        str(path.relative_to(TESTS)): cross_test_imports(path.read_text(encoding="utf-8"))
        for path in suite_modules() + sorted((TESTS / "support").glob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    "source",
    [
        "from tests.test_wizard import fp_of",
        "import tests.test_api",
        "from tests.conftest import PASSWORD",
        "def f():\n    from tests.test_rotation import _start\n",
        "from . import test_wizard",
        "from .test_wizard import fp_of",
    ],
)
def test_the_import_check_catches_every_way_of_importing_a_test_module(source):
    """A positive control: each spelling of a cross-test import is reported."""
    assert cross_test_imports(source), source


def test_the_import_check_allows_tests_support():
    """Importing from tests/support/ is the way to share code."""
    assert cross_test_imports("from tests.support.api import Api\nimport tests.support") == []


def test_helpers_live_in_tests_support_only():
    """Every module of the suite outside tests/support/ is a test module or the conftest."""
    loose = [
        str(p.relative_to(TESTS))
        for p in suite_modules()
        if not (p.name.startswith("test_") or p.name in {"conftest.py", "__init__.py"})
    ]
    assert loose == []


def test_no_test_file_is_over_600_lines():
    """Split a file by behaviour before it passes 600 lines."""
    long = {str(p.relative_to(TESTS)): too_long(p) for p in sorted(TESTS.rglob("*.py"))}
    assert {k: v for k, v in long.items() if v} == {}


def test_the_length_check_catches_a_long_file(tmp_path):
    """A positive control: a file of 601 lines is reported, one of 600 is not."""
    path = tmp_path / "test_long.py"
    path.write_text("x = 1\n" * (MAX_LINES + 1))
    assert too_long(path) == MAX_LINES + 1
    path.write_text("x = 1\n" * MAX_LINES)
    assert too_long(path) is None
