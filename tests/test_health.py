"""``/healthz`` reports the database and Redis as they are."""

from __future__ import annotations

from pathlib import Path

from portal import create_app
from portal.redis_conn import ensure_embedded, stop_embedded


def test_healthz_ok_when_database_and_redis_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_healthz_503_when_redis_is_stopped(app_config, tmp_path):
    home = Path(tmp_path / "own-redis")
    home.mkdir()
    url = ensure_embedded(home)
    app = create_app({**app_config, "REDIS_URL": url})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert stop_embedded(home)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable" and body["database"] == "ok"
    assert body["redis"].startswith("error")
    app.extensions["db_engine"].dispose()


def test_healthz_503_when_database_is_unreachable(app_config):
    app = create_app({**app_config, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"].startswith("error")
