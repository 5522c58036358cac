"""The shape of the code: module sizes, packages a wheel can find, and the checked layers."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 300
# Alembic revisions are written once and never edited, so their length is not a reading burden.
SIZE_EXEMPT = ("migrations",)
# The contract every portal module must be placed in (pyproject.toml, [tool.importlinter]).
MAIN_LAYERS = "Web areas above services above crypto, custody and the database"


def oversized_modules(root: Path, packages: tuple[str, ...], limit: int) -> list[str]:
    """Python modules under the given top-level packages that are longer than ``limit`` lines."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if any(part in SIZE_EXEMPT for part in relative.parts):
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                found.append(f"{relative}: {lines} lines")
    return found


def packages_without_init(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Folders holding Python modules that lack ``__init__.py`` (find_packages skips them)."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            folder = path.parent
            if "__pycache__" not in folder.parts and not (folder / "__init__.py").exists():
                found.append(str(folder.relative_to(root)))
    return sorted(set(found))


def layer_modules(pyproject: dict, contract_name: str) -> set[str]:
    """Every module named in a layer of one import-linter contract (optional ones too)."""
    (contract,) = [
        c for c in pyproject["tool"]["importlinter"]["contracts"] if c["name"] == contract_name
    ]
    names: set[str] = set()
    for layer in contract["layers"]:
        for part in layer.replace("|", ":").split(":"):
            names.add(part.strip().strip("()"))
    return names


def module_names(root: Path, package: str) -> set[str]:
    """Dotted names of the package's modules, a package's ``__init__`` named as the package."""
    names = set()
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


def unlayered_modules(modules: set[str], layers: set[str]) -> list[str]:
    """Modules in no layer: neither named, nor inside a named one, nor a package split by them."""

    def placed(name: str) -> bool:
        """True when the module, an ancestor of it, or a descendant of it is a layer."""
        return any(
            name == layer or name.startswith(layer + ".") or layer.startswith(name + ".")
            for layer in layers
        )

    return sorted(name for name in modules if not placed(name))


def test_no_module_is_over_300_lines() -> None:
    """Every module of portal/ and jobs/ reads in one sitting (migrations aside)."""
    assert oversized_modules(ROOT, ("portal", "jobs"), MAX_MODULE_LINES) == []


def test_module_size_check_finds_a_long_module(tmp_path: Path) -> None:
    """The size check reports a module one line over the limit, and skips migrations."""
    (tmp_path / "pkg" / "migrations").mkdir(parents=True)
    (tmp_path / "pkg" / "short.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "pkg" / "migrations" / "0001.py").write_text("x = 1\n" * 1000)
    assert oversized_modules(tmp_path, ("pkg",), MAX_MODULE_LINES) == [
        f"pkg/long.py: {MAX_MODULE_LINES + 1} lines"
    ]


def test_every_folder_of_modules_is_a_package() -> None:
    """The wheel finds packages by ``__init__.py``: a folder without one would be left out."""
    assert packages_without_init(ROOT, ("portal", "jobs")) == []


def test_package_check_finds_a_folder_without_init(tmp_path: Path) -> None:
    """The package check reports a folder of modules that has no ``__init__.py``."""
    (tmp_path / "pkg" / "loose").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "loose" / "thing.py").write_text("")
    assert packages_without_init(tmp_path, ("pkg",)) == [str(Path("pkg") / "loose")]


def test_every_portal_module_is_in_a_layer() -> None:
    """A new module must be placed in a layer, or the contracts would not check its imports."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    modules = module_names(ROOT, "portal") - {"portal"}
    assert unlayered_modules(modules, layer_modules(pyproject, MAIN_LAYERS)) == []


def test_layer_check_finds_an_unplaced_module() -> None:
    """A module outside every layer is reported; one inside a layered package is not."""
    layers = {"app.views", "app.services", "lib"}
    modules = {"app", "app.views", "app.services", "app.new", "lib.crypto"}
    assert unlayered_modules(modules, layers) == ["app.new"]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_contracts_are_kept() -> None:
    """`lint-imports` passes: one-way layers, no service cycles, portal never imports jobs."""
    result = subprocess.run(
        [shutil.which("lint-imports") or "lint-imports", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("portal/db.py", "import portal.rotation.views", "Web areas above services"),
        ("portal/chat/kinds.py", "import portal.rotation.start", "rotation above keys above chat"),
        ("portal/rotation/engine.py", "import jobs.rotation", "portal never imports jobs"),
    ],
)
def test_contracts_catch_a_forbidden_import(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    """On a copy of the code with one forbidden import added, the contract it breaks says so."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("portal", "jobs"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / module).open("a", encoding="utf-8") as source:
        source.write(f"\n{line}  # noqa\n")
    result = subprocess.run(
        [shutil.which("lint-imports") or "lint-imports", "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert [c for c in result.stdout.splitlines() if c.endswith(" BROKEN") and broken in c]
