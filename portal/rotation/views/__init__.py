"""Rotation pages: the runs list, a run's live progress, its controls and failures.

One blueprint, its routes in three modules: the pages and polled fragments, the controls,
and the failures export. Importing them here registers their routes on ``bp``.
"""

from __future__ import annotations

from portal.rotation.views import controls, failures, pages  # noqa: F401 - routes join bp
from portal.rotation.views.common import bp

__all__ = ["bp"]
