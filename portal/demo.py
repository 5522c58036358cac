"""``byok-portal demo``: a working portal on the embedded default from one command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.db import new_id
from portal.models import Organization
from portal.processes import Children, say

DEMO_ORGS = (
    ("Solo Community", "community"),
    ("Acme Org Community", "org_community"),
    ("Globex Dedicated", "dedicated"),
    ("Initech On-Premise", "on_prem"),
)
DEMO_ROLES = ("admin", "auditor", "member")
SUPPORT_EMAIL = "support@platform.example"
TOPICS = ("Quarterly plan", "Support escalation", "Product ideas")
CONVERSATION_ITEMS = 25  # a conversation and its messages
# Measured on the embedded default with the demo's worker, on two cores shared with other
# work: a rotation moves 6,000 to 7,000 items a second (100,000 in 14 s, 120,000 in 21 s),
# and seeding writes 8,000 to 10,000 a second. 120,000 keep the run page moving for about
# 20 s and the demo's first start under 30 s.
DEFAULT_ITEMS = 120_000
FEW_ITEMS = 19  # three conversations of five messages, and a file


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


@dataclass(frozen=True)
class Login:
    """One demo sign-in, and its organisation with the organisation's tier."""

    email: str
    password: str
    organisation: str


def seed(app: Flask, items: int = DEFAULT_ITEMS) -> list[Login]:
    """Create the demo organisations and users unless they exist; return the logins.

    A new organisation that may switch BYOK on later (Organization Community) gets ``items``
    items, enough to watch a rotation's progress; one without BYOK (Community) a few; the
    isolated tiers none, as they store nothing before BYOK is on.
    """
    from portal.auth.services import create_user
    from portal.db import get_session
    from portal.keys.policy import byok_eligible, byok_required
    from portal.models import User
    from portal.orgs import create_org, slugify

    home = Path(app.config["BYOK_HOME"])
    logins = _load_logins(home)
    db = get_session()
    wanted: list[tuple[str, str, Organization | None, str]] = []
    for name, tier in DEMO_ORGS:
        org = db.scalar(select(Organization).where(Organization.slug == slugify(name)))
        if org is None:
            org = create_org(db, name, tier)
            if not byok_required(org):
                count = items if byok_eligible(org) else FEW_ITEMS
                started = time.monotonic()
                say(f"seeding {name}: {count} items...")
                seed_chat(db, org, count)
                db.commit()
                say(f"seeded {name} in {time.monotonic() - started:.1f} s")
        for role in DEMO_ROLES:
            wanted.append((f"{role}@{org.slug}.example", role, org, _heading(org)))
    wanted.append((SUPPORT_EMAIL, "support", None, _heading(None)))
    shown = []
    missing = {w[0] for w in wanted if db.scalar(select(User.id).where(User.email == w[0])) is None}
    if missing:
        say(f"creating {len(missing)} demo users (each password hash takes a moment)...")
    for email, role, org, heading in wanted:
        if email in missing:
            password = secrets.token_urlsafe(12)
            create_user(db, email, password, role, org)
            logins[email] = password
        if email in logins:  # one created elsewhere has a password the demo does not know
            shown.append(Login(email, logins[email], heading))
    db.commit()
    _save_logins(home, logins)
    return shown


def seed_chat(db: Session, org: Organization, items: int) -> None:
    """Write ``items`` items: conversations of up to 25 items, the first with a file.

    Each value is encrypted as the data API does it (same check, keyring and associated
    data), then rows go in by bulk insert: thousands of them in a second or two.
    """
    from sqlalchemy import inspect

    from portal.chat import kinds
    from portal.chat.keyrings import keyring_source
    from portal.chat.models import Attachment, Conversation, Message

    ring = keyring_source().writable(db, org.id)

    def sealed(row: Any, **values: bytes) -> dict[str, Any]:
        """Encrypt values into the row's columns, then return the row as insert values."""
        for ad_name, data in values.items():
            kinds.encrypt_column(ring, row, ad_name, data)
        return dict(inspect(row).dict)

    rows: dict[type, list[dict[str, Any]]] = {Conversation: [], Message: [], Attachment: []}
    at = datetime.now(UTC)
    left, n = items, 0
    while left > 0:
        n += 1
        topic = TOPICS[(n - 1) % len(TOPICS)]
        conv_id = new_id()
        meta = json.dumps({"channel": "demo", "n": n}, separators=(",", ":")).encode()
        conv = Conversation(id=conv_id, company_id=org.id, created_at=at)
        rows[Conversation].append(sealed(conv, title=f"{topic} #{n}".encode(), metadata=meta))
        left -= 1
        if n == 1 and left > 0:
            att_id, notes = new_id(), f"Notes for {org.name}.\n".encode()
            att = Attachment(
                id=att_id,
                company_id=org.id,
                conversation_id=conv_id,
                content_type="text/plain",
                size=len(notes),
                created_at=at,
            )
            rows[Attachment].append(sealed(att, filename=b"notes.txt", content=notes))
            left -= 1
        for i in range(min(CONVERSATION_ITEMS - 1, left)):
            msg_id, author = new_id(), ("user", "assistant")[i % 2]
            body = f"{topic} #{n}: message {i + 1} from the {author}.".encode()
            at += timedelta(microseconds=1)  # keeps each conversation's messages in order
            msg = Message(
                id=msg_id, company_id=org.id, conversation_id=conv_id, author=author, created_at=at
            )
            rows[Message].append(sealed(msg, body=body))
            left -= 1
    for model, values in rows.items():  # conversations first: the others refer to them
        if values:
            db.execute(model.__table__.insert(), values)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_demo(host: str, port: int, items: int = DEFAULT_ITEMS) -> None:
    """Initialise, seed, serve the portal and a worker, print the logins; stop on a signal."""
    from werkzeug.serving import make_server

    from portal import create_app
    from portal.redis_conn import connect, ensure_embedded, stop_embedded
    from portal.setup import initialise

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # From here on SIGTERM and SIGHUP unwind like Ctrl-C, so whatever was started gets stopped.
    for signum in STOP_SIGNALS[1:]:
        signal.signal(signum, _stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a gone reader is EPIPE, handled by say()
    children = Children()
    app = server = None
    status = 0
    found_redis = False  # an embedded Redis of an earlier run, not started by this one
    try:
        app = create_app()
        home = Path(app.config["BYOK_HOME"])
        with app.app_context():
            for line in initialise(app):
                say(line)
            logins = seed(app, items)
        if _embedded(app):
            app.config["REDIS_URL"] = ensure_embedded(home, spawn=children.start)
            found_redis = not children.procs
        connect(app)
        env = dict(os.environ, REDIS_URL=app.config["REDIS_URL"], BYOK_HOME=str(home))
        children.start([sys.executable, "-m", "portal.cli", "worker"], relay=True, env=env)
        try:
            server = make_server(host, port, app, threaded=True)
        except OSError as exc:
            say(f"cannot serve on {host}:{port}: {exc.strerror}")
            status = 1
        else:
            _print_logins(f"http://{host}:{port}/", logins)
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the stopping short
            signal.signal(signum, signal.SIG_IGN)
        embedded = app is not None and _embedded(app)
        say("stopping: web server, worker" + (", embedded Redis" if embedded else ""))
        if server is not None:
            server.server_close()
        children.stop_all()
        if found_redis:
            stop_embedded(Path(app.config["BYOK_HOME"]))
        say("stopped")
    if status:
        raise SystemExit(status)


def _embedded(app: Flask) -> bool:
    """Tell whether the app runs on the embedded Redis."""
    return bool(app.config.get("REDIS_EMBEDDED"))


def _print_logins(url: str, logins: list[Login]) -> None:
    """Print the portal's address and every demo login, under its organisation and tier."""
    say()
    say(f"byok-portal demo is running at {url}")
    say("Sign in with one of these (passwords are kept in the instance folder):")
    heading = None
    for login in logins:
        if login.organisation != heading:
            heading = login.organisation
            say(f"  {heading}")
        say(f"    {login.email:<42} {login.password}")
    say("Press Ctrl-C to stop.")


def _heading(org: Organization | None) -> str:
    """Name an organisation, its tier and what the tier means for BYOK (ASCII only)."""
    from portal.keys.policy import byok_eligible, byok_required

    if org is None:
        return "Platform support: no organisation; watches every organisation's rotations"
    if byok_required(org):
        byok = "BYOK required before any data is stored"
    elif byok_eligible(org):
        byok = "BYOK available; data so far under a platform key"
    else:
        byok = "no BYOK: platform key only"
    return f"{org.name} - {org.tier_label} tier: {byok}"
