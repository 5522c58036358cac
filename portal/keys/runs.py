"""Whether a re-encryption run blocks key operations.

portal.keys may not import portal.rotation (rotation is built on keys), so the query on
rotation runs is given to the app: create_app sets ``app.extensions["active_run"]`` to
``portal.rotation.active.active_run``.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from flask import current_app
from sqlalchemy.orm import Session


class ActiveRun(Protocol):
    """Finds an organisation's unfinished run: anything with ``old_key_ids``, or None."""

    def __call__(self, session: Session, company_id: uuid.UUID) -> Any | None:
        """Return the organisation's unfinished rotation or re-encryption run, if any."""


def run_in_progress(session: Session, company_id: uuid.UUID) -> Any | None:
    """Return the organisation's unfinished rotation or re-encryption run, if any.

    Fails closed: without the wiring no key operation could tell that a run is moving
    items, so it raises rather than answering "no run".
    """
    finder: ActiveRun | None = current_app.extensions.get("active_run")
    if finder is None:
        raise RuntimeError(
            'app.extensions["active_run"] is not set: create_app wires '
            "portal.rotation.active.active_run, so key operations can see running rotations"
        )
    return finder(session, company_id)
