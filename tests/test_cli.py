"""The ``byok-portal`` command, in-process on the test's app (as real processes: test_cli_smoke)."""

from __future__ import annotations

import os
from importlib.metadata import version

from sqlalchemy import inspect

from portal.db import make_engine
from portal.migrate import current_revision, head_revision, upgrade
from tests.support.services import _create_pg_database, _drop_pg_database
from tests.support.web import PASSWORD


def test_help_lists_every_command(cli):
    out = cli("--help").stdout
    for command in ("init", "create-org", "create-user", "serve", "worker", "demo", "key"):
        assert command in out
    for command in ("rotation", "audit", "data"):
        assert command in out
    # Flask's own commands, from the FlaskGroup the command is built on.
    assert "routes" in out and "shell" in out


def test_flask_development_server_is_not_offered(cli):
    """``serve`` (gunicorn) is how the portal is served; Werkzeug's debug server is not."""
    listed = [
        line.split()[0]
        for line in cli("--help").stdout.split("Commands:")[1].splitlines()
        if line.strip()
    ]
    assert "serve" in listed and "run" not in listed
    assert cli("run").returncode == 2  # no such command


def test_version_is_the_installed_package_version(cli):
    result = cli("--version")
    assert (result.returncode, result.stdout) == (0, f"byok-portal {version('byok-portal')}\n")


def test_routes_lists_the_portal_routes(cli):
    result = cli("routes")
    assert result.returncode == 0, result.stderr
    assert "/settings/compliance" in result.stdout and "/api/v1" in result.stdout


def test_init_twice_is_harmless(cli):
    first = cli("init")
    second = cli("init")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "up to date" in second.stdout


def test_create_org_and_user_then_sign_in(cli, client):
    created = cli("create-org", "Umbrella Corp", "--tier", "dedicated")
    assert created.returncode == 0, created.stderr
    assert "umbrella-corp" in created.stdout
    user = cli(
        "create-user",
        "Ada@Umbrella.example",
        "--org",
        "umbrella-corp",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert user.returncode == 0, user.stderr
    from tests.support.web import login

    assert login(client, "ada@umbrella.example").status_code == 302
    assert "Dedicated" in client.get("/settings/compliance").get_data(as_text=True)


def test_create_org_again_with_the_same_tier_succeeds_for_automation(cli, app):
    assert cli("create-org", "Twice", "--tier", "community").returncode == 0
    again = cli("create-org", "Twice", "--tier", "community")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "organisation twice (community) exists already\n"
    with app.app_context():
        from sqlalchemy import func, select

        from portal.db import get_session
        from portal.models import Organization

        slugs = select(func.count()).where(Organization.slug == "twice")
        assert get_session().scalar(slugs) == 1


def test_create_org_refuses_another_tier_for_an_existing_slug_and_a_bad_tier(cli):
    assert cli("create-org", "Twice", "--tier", "community").returncode == 0
    other = cli("create-org", "Twice", "--tier", "dedicated")
    assert other.returncode == 1
    assert other.stderr == "error: an organisation with slug 'twice' exists already\n"
    assert other.stdout == ""
    bad = cli("create-org", "Nope", "--tier", "platinum")
    assert bad.returncode == 2  # a usage error, from click


def test_create_user_refuses_unknown_org_and_short_password(cli):
    unknown = cli(
        "create-user",
        "x@y.example",
        "--org",
        "ghost",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD,
    )
    assert unknown.returncode != 0 and "no organisation" in unknown.stderr
    cli("create-org", "Short", "--tier", "org_community")
    short = cli(
        "create-user",
        "x@y.example",
        "--org",
        "short",
        "--role",
        "admin",
        "--password-stdin",
        stdin="abc",
    )
    assert short.returncode != 0 and "at least 10" in short.stderr


def test_migrations_upgrade_from_empty(services, tmp_path):
    if services.is_postgres:
        url, name = _create_pg_database(os.environ["TEST_DATABASE_URL"])
    else:
        url, name = f"sqlite:///{tmp_path / 'empty.sqlite3'}", None
    engine = make_engine(url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert {"organizations", "users", "audit_events", "audit_heads"} <= tables
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
        if name:
            _drop_pg_database(os.environ["TEST_DATABASE_URL"], name)


def test_set_password_signs_out_existing_sessions(cli, client, orgs):
    from tests.support.web import login

    assert login(client, orgs["users"]["admin_a"]).status_code == 302
    assert client.get("/settings/compliance").status_code == 200
    changed = cli(
        "set-password",
        orgs["users"]["admin_a"],
        "--password-stdin",
        stdin="a brand new passphrase\n",
    )
    assert changed.returncode == 0, changed.stderr
    assert client.get("/settings/compliance").status_code == 302  # the old cookie is dead
    assert login(client, orgs["users"]["admin_a"]).status_code == 401  # old password too
    assert login(client, orgs["users"]["admin_a"], "a brand new passphrase").status_code == 302
    short = cli("set-password", orgs["users"]["admin_a"], "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10" in short.stderr
