"""A run's failed items as a CSV download: kind, item id and reason, never content or keys."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator

from flask import Response, stream_with_context
from sqlalchemy import select

from portal.auth.gates import require_role
from portal.db import get_session
from portal.rotation.models import RotationFailure
from portal.rotation.views.common import bp, run_or_404

# Failed items read per query by the CSV export.
FAILURES_CSV_PAGE = 1000


def _rows(run_id: uuid.UUID) -> Iterator[str]:
    """The CSV text, a page of failures at a time, each page its own short read."""
    columns = (
        RotationFailure.id,
        RotationFailure.kind,
        RotationFailure.item_id,
        RotationFailure.reason,
        RotationFailure.created_at,
    )
    db = get_session()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["kind", "item_id", "reason", "at"])
    yield buffer.getvalue()
    after = 0
    while True:
        page = db.execute(
            select(*columns)
            .where(RotationFailure.run_id == run_id, RotationFailure.id > after)
            .order_by(RotationFailure.id)
            .limit(FAILURES_CSV_PAGE)
        ).all()
        # A slow download must never hold a transaction open between pages.
        db.rollback()
        if not page:
            return
        buffer.seek(0)
        buffer.truncate()
        for failure_id, kind, item_id, reason, created_at in page:
            writer.writerow([kind, item_id, reason, created_at.isoformat()])
            after = failure_id
        yield buffer.getvalue()


@bp.get("/<uuid:run_id>/failures.csv")
@require_role("support", "admin")
def failures_csv(run_id: uuid.UUID) -> Response:
    """Every failed item of the run as CSV (kind, id, reason): no content, no keys."""
    run = run_or_404(run_id)
    # Streamed after the view returns: stream_with_context keeps the app context (and so
    # the session) alive until the last row.
    response = Response(stream_with_context(_rows(run.id)), mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="rotation-{run.id}-failures.csv"'
    )
    return response
