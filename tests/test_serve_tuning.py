"""``byok-portal serve`` runs gunicorn with the measured defaults, and operators tune it the way
gunicorn documents: a config file (``-c`` in GUNICORN_CMD_ARGS, or ./gunicorn.conf.py), then
GUNICORN_CMD_ARGS, then serve's own flags; the forwarded-header lock-down survives them all."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from limits import parse

from portal import serving
from portal.config import Config
from tests.support.faults import process_env
from tests.support.nginx import start_process, stop_process, tail, wait_until
from tests.support.processes import free_port


@pytest.fixture
def operator_env(monkeypatch, tmp_path):
    """A clean environment and working directory: no GUNICORN_CMD_ARGS, no config file."""
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    monkeypatch.delenv("TRUSTED_PROXY_COUNT", raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def settings(bind: str | None = None, workers: int | None = None):
    """The gunicorn settings ``serve`` would run with."""
    return serving.portal_application(bind, workers).cfg


def test_serve_defaults_are_the_measured_worker_class_threads_and_keep_alive(operator_env):
    cfg = settings()
    assert cfg.worker_class_str == serving.DEFAULT_WORKER_CLASS == "gthread"
    assert cfg.threads == serving.DEFAULT_THREADS
    assert cfg.keepalive == serving.DEFAULT_KEEPALIVE_SECONDS
    assert cfg.workers == serving.default_workers()
    assert cfg.bind == [serving.DEFAULT_BIND]


@pytest.mark.parametrize(("cores", "workers"), [(1, 2), (2, 2), (4, 4), (16, 16)])
def test_default_workers_follow_the_cores(cores, workers):
    assert serving.default_workers(cores) == workers


def test_gunicorn_cmd_args_override_the_defaults(operator_env):
    operator_env.setenv("GUNICORN_CMD_ARGS", "--worker-class sync --workers 3 --keep-alive 9")
    cfg = settings()
    # sync stays sync: the default threads apply to the default gthread class only.
    assert (cfg.worker_class_str, cfg.workers, cfg.threads, cfg.keepalive) == ("sync", 3, 1, 9)
    operator_env.setenv("GUNICORN_CMD_ARGS", "--threads 2")
    cfg = settings()
    assert (cfg.worker_class_str, cfg.threads) == ("gthread", 2)


def test_a_config_file_named_in_cmd_args_is_read_and_cmd_args_win_over_it(operator_env, tmp_path):
    conf = tmp_path / "tuned.py"
    conf.write_text("threads = 7\nkeepalive = 11\nworkers = 5\n")
    operator_env.setenv("GUNICORN_CMD_ARGS", f"-c {conf} --keep-alive 3")
    cfg = settings()
    assert (cfg.threads, cfg.keepalive, cfg.workers) == (7, 3, 5)


def test_gunicorn_conf_py_in_the_working_directory_is_read(operator_env, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("threads = 6\n")
    assert settings().threads == 6


def test_serve_flags_win_over_cmd_args(operator_env):
    operator_env.setenv("GUNICORN_CMD_ARGS", "--workers 3 --bind 127.0.0.1:9001 --threads 2")
    cfg = settings("127.0.0.1:9002", 6)
    assert (cfg.bind, cfg.workers, cfg.threads) == (["127.0.0.1:9002"], 6, 2)
    cfg = settings()
    assert (cfg.bind, cfg.workers) == (["127.0.0.1:9001"], 3)


def test_no_operator_setting_lets_clients_forge_forwarded_headers(operator_env, tmp_path):
    conf = tmp_path / "loose.py"
    conf.write_text("forwarded_allow_ips = '*'\nforwarder_headers = 'SCRIPT_NAME'\n")
    operator_env.setenv("GUNICORN_CMD_ARGS", f"-c {conf} --forwarded-allow-ips *")
    assert Config().TRUSTED_PROXY_COUNT == 0
    cfg = settings()
    assert cfg.forwarded_allow_ips == []
    assert cfg.secure_scheme_headers == {}
    assert cfg.forwarder_headers == []


def test_the_default_api_limit_is_per_second_and_admits_a_platform_backend():
    limit = parse(Config(env={}).RATELIMIT_API)
    # A one-second window bounds a token's burst; hundreds a second fit one backend's peak.
    assert limit.get_expiry() == 1 and limit.amount >= 500


def _two_requests_on_one_connection(port: int) -> list[bytes]:
    """Send two requests over one TCP connection; return the raw answers' status lines."""
    request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    lines = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for _ in range(2):
            data = b""
            try:
                sock.sendall(request)
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return lines  # the server closed the connection
                    data += chunk
            except ConnectionError:
                return lines
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += sock.recv(65536)
            lines.append(head.split(b"\r\n")[0])
    return lines


@pytest.mark.parametrize(
    ("cmd_args", "worker", "answers"),
    [("", "gthread", 2), ("--worker-class sync", "sync", 1)],
    ids=["default-keeps-connections-alive", "cmd-args-choose-sync"],
)
def test_serve_runs_the_worker_class_it_is_given_and_keeps_connections_alive(
    app, app_config, tmp_path: Path, cmd_args, worker, answers
):
    port = free_port()
    env = process_env(app_config, GUNICORN_CMD_ARGS=cmd_args, XDG_RUNTIME_DIR=str(tmp_path))
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "portal.cli", "serve", "--bind", f"127.0.0.1:{port}"]
    proc = start_process([*command, "--workers", "1"], env, log)
    try:
        wait_until(
            lambda: len(_two_requests_on_one_connection(port)) >= 1,
            "gunicorn",
            {"web": (proc, log)},
        )
        assert f"Using worker: {worker}" in log.read_text(), tail(log)
        # gthread answers both requests on one connection; sync closes it after the first.
        statuses = _two_requests_on_one_connection(port)
        assert statuses == [b"HTTP/1.1 200 OK"] * answers, tail(log)
    finally:
        stop_process(proc)
