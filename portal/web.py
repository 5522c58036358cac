"""Wiring the web layer: sessions, CSRF, sign-in, errors, proxy awareness, blueprints."""

from __future__ import annotations

from flask import Flask, Request, jsonify, render_template
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.auth.gates import can_open, unauthorized_response
from portal.auth.services import load_user
from portal.crypto import fingerprint
from portal.db import get_session
from portal.extensions import csrf, login_manager
from portal.htmx import add_vary, is_htmx


class PortalSessionInterface(SecureCookieSessionInterface):
    """Cookie sessions that are marked ``Secure`` whenever the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:  # type: ignore[override]
        """Mark the cookie Secure when configured to or when this request is https."""
        from flask import has_request_context, request

        configured = bool(app.config.get("SESSION_COOKIE_SECURE"))
        return configured or (has_request_context() and request.is_secure)

    def get_cookie_path(self, app: Flask) -> str:  # type: ignore[override]
        """Scope the cookie to the portal's path prefix, not the whole host."""
        from flask import has_request_context, request

        if app.config.get("SESSION_COOKIE_PATH"):
            return app.config["SESSION_COOKIE_PATH"]
        return ((request.script_root if has_request_context() else "") or "") + "/"


def init_app(app: Flask) -> None:
    """Install sessions, CSRF, login, proxy handling and error pages."""
    hops = app.config["TRUSTED_PROXY_COUNT"]
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops
        )
    app.session_interface = PortalSessionInterface()
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.session_protection = "basic"
    login_manager.user_loader(lambda cookie_id: load_user(get_session(), cookie_id))
    login_manager.unauthorized_handler(unauthorized_response)
    app.extensions["on_access_denied"] = _audit_denial
    app.jinja_env.globals["can_open"] = can_open
    app.jinja_env.filters["fingerprint"] = lambda key_id_hex: fingerprint(bytes.fromhex(key_id_hex))
    app.jinja_env.globals["current_user"] = current_user

    @app.after_request
    def _vary(response):
        """Responses differ by session and by htmx; say so to every cache."""
        add_vary(response, "Cookie", "HX-Request")
        return response

    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    from portal import security

    security.init_app(app)


def _audit_denial(endpoint: str | None) -> None:
    """Record a signed-in user's attempt to open a page their role may not open."""
    from portal.audit.actions import Action
    from portal.events import emit

    db = get_session()
    emit(
        db,
        Action.ACCESS_DENIED,
        outcome="denied",
        actor=current_user._get_current_object(),
        details={"endpoint": endpoint or ""},
    )
    db.commit()


def _wants_json(request: Request) -> bool:
    """Tell whether the caller is an API client that expects JSON errors."""
    return request.path.startswith("/api/") or request.path == "/healthz"


def _csrf_error(error: CSRFError):
    """Refuse a request without a valid CSRF token with a plain 400."""
    return _http_error(error)


MESSAGES = {
    400: "The request could not be understood. Reload the page and try again.",
    403: "Your role cannot open this page. An admin of your organisation can help.",
    404: "There is nothing at this address.",
    405: "This address cannot be used that way.",
    413: "What you sent is too large.",
}

# What a rate limit counts, by the area that refused the request.
LIMITED = {"auth": "sign-in attempts", "compliance": "key operations"}


def _limited_message() -> str:
    """Say what was limited and how long to wait ("Too many sign-in attempts; try again in
    40 s"), in the same whole seconds as the Retry-After header."""
    from flask import request

    from portal.security import retry_after_seconds

    what = LIMITED.get(request.blueprint or "", "requests")
    return f"Too many {what}; try again in {retry_after_seconds()} s."


def _http_error(error: HTTPException):
    """Render an HTTP error as JSON, an htmx fragment or a page, revealing no internals."""
    from flask import request

    status = error.code or 500
    if status == 429:
        message = _limited_message()
    elif status >= 500:
        message = "Something went wrong."
    elif error.description == type(error).description and status in MESSAGES:
        message = MESSAGES[status]  # Werkzeug's generic text speaks of servers and files
    else:
        message = error.description
    if _wants_json(request):
        return jsonify(error=error.name.lower().replace(" ", "_"), message=message), status
    template = "errors/_error.html" if is_htmx() else "errors/error.html"
    return render_template(template, status=status, title=error.name, message=message), status


def register_areas(app: Flask) -> None:
    """Register each area's blueprint."""
    from portal.api import bp as api_bp
    from portal.audit.views import bp as audit_bp
    from portal.auth import bp as auth_bp
    from portal.compliance import bp as compliance_bp
    from portal.health import bp as health_bp
    from portal.home import bp as home_bp
    from portal.rotation.views import bp as rotation_bp

    csrf.exempt(api_bp)  # bearer tokens, not cookies: no cross-site request can forge one
    from portal.security import api_limit

    api_limit(api_bp)
    for blueprint in (auth_bp, home_bp, compliance_bp, audit_bp, rotation_bp, health_bp, api_bp):
        app.register_blueprint(blueprint)
