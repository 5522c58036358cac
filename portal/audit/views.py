"""Company Settings → Audit Log: the filter view, its results fragment and the exports."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.audit import export
from portal.audit.actions import Action
from portal.audit.filters import (
    ACTIONS,
    CATEGORIES,
    AuditFilter,
    Page,
    load_page,
    parse_filters,
)
from portal.auth.gates import require_role
from portal.db import get_engine, get_session
from portal.events import emit
from portal.htmx import add_vary, is_htmx
from portal.models import Organization, User

bp = Blueprint("audit", __name__, url_prefix="/settings/audit")
FORMATS = {"csv": export.csv_rows, "jsonl": export.jsonl_rows}


@bp.after_request
def _no_store(response: Response) -> Response:
    """Audit pages and exports are never cached; pages and fragments share one URL."""
    response.headers["Cache-Control"] = "no-store"
    return add_vary(response, "HX-Request", "HX-History-Restore-Request")


def _company_id() -> uuid.UUID:
    """The signed-in user's organisation (admins and auditors always have one)."""
    if current_user.company_id is None:
        abort(403)
    return current_user.company_id


def _wants_fragment() -> bool:
    """Tell whether to answer with the results fragment alone (htmx, not a history restore)."""
    return is_htmx() and request.headers.get("HX-History-Restore-Request") != "true"


def _actors(company_id: uuid.UUID) -> list[str]:
    """Suggestions for the actor filter: the organisation's users and the system actors."""
    emails = get_session().scalars(
        select(User.email).where(User.company_id == company_id).order_by(User.email)
    )
    return [*emails, "cli", "system"]


def _pretty(details: str) -> str:
    """Indent an event's details JSON for reading (stored text as is when it is not JSON)."""
    try:
        return json.dumps(json.loads(details), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return details


def _page(f: AuditFilter, company_id: uuid.UUID, page: Page | None, status: int) -> tuple[str, int]:
    """Render the whole Audit Log page: filters form and results."""
    extra = f.type if f.unknown_type else None
    html = render_template(
        "audit/index.html",
        f=f,
        page=page,
        pretty=_pretty,
        actors=_actors(company_id),
        categories=CATEGORIES,
        actions=ACTIONS,
        extra_type=extra,
    )
    return html, status


def _self_url(f: AuditFilter) -> str:
    """This view's URL for a filter; invalid input is echoed back as typed."""
    if f.errors:
        return url_for("audit.index", **{k: v for k, v in request.args.items() if v})
    return url_for("audit.index", **f.page_args(before=f.before, after=f.after))


@bp.get("")
@require_role("admin", "auditor")
def index() -> tuple[str, int] | Response:
    """The Audit Log: filters and newest-first events; htmx gets the results fragment."""
    company_id = _company_id()
    f = parse_filters(request.args)
    page = None if f.errors else load_page(get_session(), company_id, f)
    status = 400 if f.errors else 200
    if request.headers.get("HX-History-Restore-Request") == "true":
        status = 200  # htmx restores history only from a 2xx; the page still shows the error
    if not _wants_fragment():
        return _page(f, company_id, page, status)
    html = render_template("audit/_results.html", f=f, page=page, pretty=_pretty)
    response = Response(html, status)
    # The canonical URL (no empty fields) goes into the address bar, once per distinct view.
    url = _self_url(f)
    current = urlsplit(request.headers.get("HX-Current-URL", ""))
    same = url == current.path + (f"?{current.query}" if current.query else "")
    response.headers["HX-Push-Url"] = "false" if same else url
    return response


@bp.get("/export.<fmt>")
@require_role("admin", "auditor")
def export_events(fmt: str) -> tuple[str, int] | Response:
    """Stream every event the view's filters select, as CSV or JSON Lines; audited first."""
    if fmt not in FORMATS:
        abort(404)
    company_id = _company_id()
    f = parse_filters(request.args).first_page()
    if f.filter_errors:
        return _page(AuditFilter(errors=f.filter_errors), company_id, None, 400)
    db = get_session()
    actor = current_user._get_current_object()
    marker = emit(
        db, Action.AUDIT_EXPORTED, actor=actor, details={"format": fmt, "filters": f.filter_args()}
    )
    db.commit()  # recorded before a single row leaves, even if the download is abandoned
    org = db.get(Organization, company_id)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"audit-{org.slug if org else 'org'}-{stamp}.{fmt}"
    rows = FORMATS[fmt](export.stream(get_engine(), company_id, f, upto=marker.id))
    mimetype = "text/csv" if fmt == "csv" else "application/jsonl"
    return Response(
        rows,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
