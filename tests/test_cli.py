"""The ``byok-portal`` command, run as a real process against this run's services."""

from __future__ import annotations

import os

from sqlalchemy import inspect

from portal.db import make_engine
from portal.migrate import current_revision, head_revision, upgrade
from tests.conftest import PASSWORD, _create_pg_database, _drop_pg_database, run_cli


def test_help_lists_every_command(cli_env):
    out = run_cli(cli_env, "--help").stdout
    for command in ("init", "create-org", "create-user", "serve", "worker", "demo"):
        assert command in out


def test_init_twice_is_harmless(cli_env):
    first = run_cli(cli_env, "init")
    second = run_cli(cli_env, "init")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "up to date" in second.stdout


def test_create_org_and_user_then_sign_in(cli_env, client):
    created = run_cli(cli_env, "create-org", "Umbrella Corp", "--tier", "dedicated")
    assert created.returncode == 0, created.stderr
    assert "umbrella-corp" in created.stdout
    user = run_cli(
        cli_env,
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
    from tests.conftest import login

    assert login(client, "ada@umbrella.example").status_code == 302
    assert "Dedicated" in client.get("/settings/compliance").get_data(as_text=True)


def test_create_org_refuses_duplicate_slug_and_bad_tier(cli_env):
    assert run_cli(cli_env, "create-org", "Twice", "--tier", "community").returncode == 0
    again = run_cli(cli_env, "create-org", "Twice", "--tier", "community")
    assert again.returncode != 0 and "exists already" in again.stderr
    bad = run_cli(cli_env, "create-org", "Nope", "--tier", "platinum")
    assert bad.returncode != 0


def test_create_user_refuses_unknown_org_and_short_password(cli_env):
    unknown = run_cli(
        cli_env,
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
    run_cli(cli_env, "create-org", "Short", "--tier", "org_community")
    short = run_cli(
        cli_env,
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


def test_set_password_signs_out_existing_sessions(cli_env, client, orgs):
    from tests.conftest import login

    assert login(client, orgs["users"]["admin_a"]).status_code == 302
    assert client.get("/settings/compliance").status_code == 200
    changed = run_cli(
        cli_env,
        "set-password",
        orgs["users"]["admin_a"],
        "--password-stdin",
        stdin="a brand new passphrase\n",
    )
    assert changed.returncode == 0, changed.stderr
    assert client.get("/settings/compliance").status_code == 302  # the old cookie is dead
    assert login(client, orgs["users"]["admin_a"]).status_code == 401  # old password too
    assert login(client, orgs["users"]["admin_a"], "a brand new passphrase").status_code == 302
    short = run_cli(
        cli_env, "set-password", orgs["users"]["admin_a"], "--password-stdin", stdin="short\n"
    )
    assert short.returncode == 1 and "at least 10" in short.stderr
