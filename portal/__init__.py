"""byok-portal: the bring-your-own-key encryption key manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent


def resource_dir(name: str) -> Path:
    """A top-level folder of the checkout, or its copy inside the package once installed."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else ROOT / name


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the portal: configuration, database, Redis, sign-in, then each area."""
    from portal import db, redis_conn, web
    from portal.config import Config
    from portal.keys import service as keys

    app = Flask(
        __name__,
        instance_path=str(Config(config).BYOK_HOME),
        template_folder=str(resource_dir("templates")),
        static_folder="static",
    )
    app.config.update(Config(config).as_flask())
    db.init_app(app)
    redis_conn.init_app(app)
    keys.init_app(app)
    web.init_app(app)
    web.register_areas(app)
    return app
