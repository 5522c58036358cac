"""Where the portal's files are: the checkout's top-level folders, or their installed copies."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent


def resource_dir(name: str) -> Path:
    """A top-level folder of the checkout, or its copy inside the package once installed."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else ROOT / name
