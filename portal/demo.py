"""``byok-portal demo``: a working portal on the embedded default from one command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select

from portal.models import Organization

DEMO_ORGS = (
    ("Solo Community", "community"),
    ("Acme Org Community", "org_community"),
    ("Globex Dedicated", "dedicated"),
    ("Initech On-Premise", "on_prem"),
)
DEMO_ROLES = ("admin", "auditor", "member")
SUPPORT_EMAIL = "support@platform.example"


def _logins_file(home: Path) -> Path:
    """Where the demo's generated passwords are kept (mode 0600, demo only)."""
    return home / "demo-logins.json"


def _load_logins(home: Path) -> dict[str, str]:
    """Return the demo logins created earlier, if any."""
    try:
        return json.loads(_logins_file(home).read_text())
    except FileNotFoundError:
        return {}


def _save_logins(home: Path, logins: dict[str, str]) -> None:
    """Store the demo logins readable by the owner only."""
    path = _logins_file(home)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(logins, handle, indent=2)


def seed(app: Flask) -> dict[str, str]:
    """Create the demo organisations and users unless they exist; return the logins."""
    from portal.auth.services import create_user
    from portal.db import get_session
    from portal.keys.policy import byok_required
    from portal.models import User
    from portal.orgs import create_org, slugify

    home = Path(app.config["BYOK_HOME"])
    logins = _load_logins(home)
    db = get_session()
    wanted: list[tuple[str, str, Organization | None]] = []
    for name, tier in DEMO_ORGS:
        org = db.scalar(select(Organization).where(Organization.slug == slugify(name)))
        if org is None:
            org = create_org(db, name, tier)
            if not byok_required(org):  # isolated tiers store nothing before BYOK is on
                seed_chat(db, org)
        for role in DEMO_ROLES:
            wanted.append((f"{role}@{org.slug}.example", role, org))
    wanted.append((SUPPORT_EMAIL, "support", None))
    for email, role, org in wanted:
        exists = db.scalar(select(User.id).where(User.email == email))
        if exists and email in logins:
            continue
        if exists:  # created elsewhere: its password is unknown to the demo
            continue
        password = secrets.token_urlsafe(12)
        create_user(db, email, password, role, org)
        logins[email] = password
    db.commit()
    _save_logins(home, logins)
    return logins


def seed_chat(db, org: Organization) -> None:
    """Write a few conversations through the same service code the data API uses."""
    from portal.chat import service

    for n, topic in enumerate(("Quarterly plan", "Support escalation", "Product ideas"), 1):
        conv = service.create_conversation(db, org.id, topic, {"channel": "demo", "n": n})
        for i in range(5):
            author = "user" if i % 2 == 0 else "assistant"
            service.add_message(db, conv, author, f"{topic}: message {i + 1} from the {author}.")
        if n == 1:
            service.add_attachment(
                db, conv, "notes.txt", "text/plain", f"Notes for {org.name}.\n".encode()
            )


def run_demo(host: str, port: int) -> None:
    """Initialise, seed, serve the portal and a worker, print the logins; stop on a signal."""
    from werkzeug.serving import make_server

    from portal import create_app
    from portal.redis_conn import connect, stop_embedded
    from portal.setup import initialise

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # From here on SIGTERM unwinds like Ctrl-C, so whatever was started gets stopped.
    signal.signal(signal.SIGTERM, _stop)
    app = create_app()
    worker = server = None
    try:
        with app.app_context():
            for line in initialise(app):
                print(line)
            logins = seed(app)
        connect(app)
        env = dict(os.environ, REDIS_URL=app.config["REDIS_URL"], BYOK_HOME=app.config["BYOK_HOME"])
        worker = subprocess.Popen([sys.executable, "-m", "portal.cli", "worker"], env=env)
        server = make_server(host, port, app, threaded=True)
        _print_logins(f"http://{host}:{port}/", logins)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping: web server, worker" + (", embedded Redis" if _embedded(app) else ""))
        if server is not None:
            server.server_close()
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if _embedded(app):
            stop_embedded(Path(app.config["BYOK_HOME"]))
        print("stopped", flush=True)


def _embedded(app: Flask) -> bool:
    """Tell whether the app runs on the embedded Redis."""
    return bool(app.config.get("REDIS_EMBEDDED"))


def _print_logins(url: str, logins: dict[str, str]) -> None:
    """Print the portal's address and every demo login."""
    print()
    print(f"byok-portal demo is running at {url}")
    print("Sign in with one of these (passwords are kept in the instance folder):")
    for email, password in logins.items():
        print(f"  {email:<44} {password}")
    print("Press Ctrl-C to stop.", flush=True)
