"""byok-portal: the bring-your-own-key encryption key manager."""

from __future__ import annotations

from typing import Any

from flask import Flask

# Modules below the web layer import portal.paths, never this package: create_app reaches every
# area, so importing it would tie them to all of them (docs/architecture.md).
from portal.paths import resource_dir


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the portal: configuration, database, Redis, sign-in, then each area."""
    from portal import db, redis_conn, web
    from portal.config import Config
    from portal.keys import service as keys
    from portal.keys.keyrings import KEYRINGS
    from portal.rotation.active import active_run

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
    # Seams that keep the layers one-way: chat asks keys for keyrings, keys asks rotation for runs.
    app.extensions["keyrings"] = KEYRINGS
    app.extensions["active_run"] = active_run
    web.init_app(app)
    web.register_areas(app)
    return app
