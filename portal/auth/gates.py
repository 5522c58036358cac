"""One gate for every view: signed in, allowed role, own organisation's objects only."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, current_app, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal.db import get_session
from portal.extensions import login_manager
from portal.htmx import hx_redirect, is_htmx

F = TypeVar("F", bound=Callable[..., Any])
ALL_ROLES = frozenset({"admin", "auditor", "support", "member"})


def require_role(*roles: str) -> Callable[[F], F]:
    """Let a view run only for signed-in users holding one of ``roles``."""
    allowed = frozenset(roles) if roles else ALL_ROLES
    unknown = allowed - ALL_ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    def decorator(view: F) -> F:
        @wraps(view)
        def gated(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.role not in allowed:
                on_denied = current_app.extensions.get("on_access_denied")
                if on_denied is not None:
                    on_denied(request.endpoint)
                abort(403)
            return view(*args, **kwargs)

        gated.allowed_roles = allowed  # type: ignore[attr-defined]
        return gated  # type: ignore[return-value]

    return decorator


def can_open(endpoint: str) -> bool:
    """Tell whether the current user may open a gated endpoint (used by the navigation)."""
    view = current_app.view_functions.get(endpoint)
    roles = getattr(view, "allowed_roles", None)
    return bool(current_user.is_authenticated and roles and current_user.role in roles)


def get_owned_or_404(model: type, object_id: uuid.UUID | str) -> Any:
    """Load an object of the current user's organisation, or 404 whether absent or foreign."""
    try:
        key = object_id if isinstance(object_id, uuid.UUID) else uuid.UUID(str(object_id))
    except ValueError:
        abort(404)
    company_id = getattr(current_user, "company_id", None)
    if company_id is None:
        abort(404)
    found = get_session().scalar(
        select(model).where(model.id == key, model.company_id == company_id)
    )
    if found is None:
        abort(404)
    return found


def unauthorized_response() -> Any:
    """Send a signed-out visitor to the login page; htmx gets HX-Redirect, not a swapped 302."""
    next_path = request.full_path.rstrip("?") if request.method == "GET" else None
    target = url_for("auth.login", next=next_path)
    if is_htmx():
        return hx_redirect(target, status=401)
    return redirect(target)
