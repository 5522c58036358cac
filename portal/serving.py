"""Running the portal's two process types: the web server and the RQ workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any

from rq import Worker
from rq.serializers import JSONSerializer

DEFAULT_BIND = "127.0.0.1:8000"
# Chosen by measurement with bench/api.py (docs/operations.md, "Tuning the web server").
DEFAULT_WORKER_CLASS = "gthread"
DEFAULT_THREADS = 4
DEFAULT_KEEPALIVE_SECONDS = 5


def default_workers(cores: int | None = None) -> int:
    """Worker processes when nobody says: one per core (threads cover the waits on I/O)."""
    return max(2, cores or os.cpu_count() or 1)


def portal_application(bind: str | None = None, workers: int | None = None):
    """The gunicorn application serving the portal, configured in gunicorn's own order:
    the portal's defaults, then a config file (``-c``/``--config`` in GUNICORN_CMD_ARGS, else
    ``./gunicorn.conf.py``), then GUNICORN_CMD_ARGS, then ``serve``'s --bind and --workers when
    given. The forwarded-header lock-down below is applied last: no setting undoes it.
    """
    from gunicorn.app.base import Application
    from gunicorn.config import get_default_config_file

    from portal import create_app
    from portal.config import Config

    class Portal(Application):
        """gunicorn application that serves the portal's app factory."""

        def load_config(self) -> None:
            """Apply the defaults, the operator's file and GUNICORN_CMD_ARGS, then the flags."""
            defaults: dict[str, Any] = {
                "bind": DEFAULT_BIND,
                "workers": default_workers(),
                "worker_class": DEFAULT_WORKER_CLASS,
                "keepalive": DEFAULT_KEEPALIVE_SECONDS,
                "timeout": 60,
                "graceful_timeout": 30,
                "accesslog": "-",
                "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
            }
            for key, value in defaults.items():
                self.cfg.set(key, value)
            env_args = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
            config_file = env_args.config or get_default_config_file()
            from_file = self.load_config_from_file(config_file) if config_file else {}
            for key, value in vars(env_args).items():
                if value is not None and key != "args":
                    self.cfg.set(key.lower(), value)
            # Threads only where the operator kept gthread and said nothing about them:
            # gunicorn turns any worker class named "sync" into gthread when threads > 1.
            chose_threads = env_args.threads is not None or "threads" in from_file
            if not chose_threads and self.cfg.worker_class_str == DEFAULT_WORKER_CLASS:
                self.cfg.set("threads", DEFAULT_THREADS)
            for key, value in (("bind", [bind] if bind else None), ("workers", workers)):
                if value is not None:
                    self.cfg.set(key, value)
            # gunicorn itself believes X-Forwarded-Proto (-Ssl, -Protocol) and a SCRIPT_NAME
            # header from the peers in forwarded_allow_ips, and from any unix-socket peer.
            # With no trusted proxy nobody may set them; behind one, only a proxy on loopback
            # (or in FORWARDED_ALLOW_IPS). The app's ProxyFix reads X-Forwarded-* for exactly
            # TRUSTED_PROXY_COUNT hops either way.
            if Config().TRUSTED_PROXY_COUNT == 0:
                self.cfg.set("forwarded_allow_ips", "")
                self.cfg.set("secure_scheme_headers", {})
                self.cfg.set("forwarder_headers", "")

        def load(self):
            """Build the app once per worker, its templates compiled before any request."""
            app = create_app()
            warm_templates(app)
            return app

    return Portal()


def run_gunicorn(bind: str | None = None, workers: int | None = None) -> None:
    """Serve the portal with gunicorn (see portal_application for where settings come from)."""
    portal_application(bind, workers).run()


def warm_templates(app) -> None:
    """Compile every template now: Jinja compiles on first use, and the first request of
    each worker to a page would pay tens of milliseconds for it (a polled fragment's tail).
    """
    for name in app.jinja_env.list_templates():
        app.jinja_env.get_template(name)


def _work(burst: bool) -> None:
    """Run one RQ worker (with the scheduler); after a Redis outage, reconnect and resume."""
    import time

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from portal import create_app
    from portal.redis_conn import connect, make_queue
    from portal.rotation.watchdog import release_claims_of, resume_active_runs
    from portal.rotation.worker import set_worker_process
    from portal.worker_app import set_app

    app = create_app()
    # Background work yields the CPU to the web processes: a rotation may use every idle
    # cycle, but not the ones a request is waiting for.
    os.nice(app.config["WORKER_NICE"])
    with app.app_context():
        set_app(app)
        set_worker_process(os.getpid())
        connection = connect(app)
        queue = make_queue(connection, app.config["RQ_QUEUE"])

        def horse_killed(_job, pid: int, _status: int, _rusage) -> None:
            """A job process died (SIGKILL, OOM): hand its ranges back now, not when stale."""
            try:
                released = release_claims_of(app, os.getpid(), pid)
            except Exception as exc:  # noqa: BLE001 - the watchdog still takes them over later
                print(f"could not release job process {pid}'s ranges: {exc!r}", flush=True)
                return
            if released:
                print(f"job process {pid} died; released {released} ranges", flush=True)

        while True:
            try:
                # The database is the source of truth: whatever Redis lost is queued again.
                resumed = resume_active_runs(app)
                if resumed:
                    print(f"resumed rotation runs: {', '.join(resumed)}", flush=True)
                Worker(
                    [queue],
                    connection=connection,
                    serializer=JSONSerializer,
                    work_horse_killed_handler=horse_killed,
                ).work(burst=burst, with_scheduler=True)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                print(f"Redis unavailable ({type(exc).__name__}); retrying", flush=True)
                time.sleep(1)


def _watch(interval: float) -> None:
    """The rotation watchdog, in its own process: independent of RQ's scheduler lock."""
    import time

    from portal import create_app
    from portal.rotation.watchdog import watch_active_runs
    from portal.worker_app import set_app

    app = create_app()
    set_app(app)
    while True:
        try:
            watch_active_runs(app)
        except Exception as exc:  # noqa: BLE001 - keep watching whatever one pass hit
            print(f"watchdog pass failed: {type(exc).__name__}: {exc}", flush=True)
        time.sleep(interval)


def _supervisor_app():
    """The app the supervisor releases a dead worker's ranges with (None if it cannot be
    built: the watchdog then takes them over when they go stale)."""
    from portal import create_app

    try:
        app = create_app()
    except Exception as exc:  # noqa: BLE001 - the workers report their own start-up errors
        print(f"supervisor cannot release ranges of dead workers: {exc!r}", flush=True)
        return None
    _close_connections(app)
    return app


def _close_connections(app) -> None:
    """Leave no database or Redis connection open for the next forked worker to inherit."""
    app.extensions["db_engine"].dispose()
    client = app.extensions.get("redis")
    if client is not None:
        client.connection_pool.disconnect()


def _release_ranges_of(app, pid: int) -> None:
    """A worker process died: hand back the ranges its jobs held and queue them first, so
    another worker goes on at once instead of after ROTATION_STALE_SECONDS."""
    from portal.rotation.watchdog import release_claims_of

    if app is None:
        return
    try:
        released = release_claims_of(app, pid)
    except Exception as exc:  # noqa: BLE001 - the watchdog still takes them over later
        print(f"could not release worker process {pid}'s ranges: {exc!r}", flush=True)
        return
    finally:
        _close_connections(app)
    if released:
        print(f"released {released} ranges of worker process {pid}", flush=True)


def run_workers(count: int, burst: bool) -> None:
    """Run ``count`` workers and a watchdog, each a process; restart any that dies."""
    import time
    from multiprocessing.connection import wait

    if burst:
        _work(burst)
        return
    from portal.config import Config

    interval = Config().ROTATION_WATCHDOG_SECONDS
    stopping = False

    def start(target, *args) -> multiprocessing.Process:
        proc = multiprocessing.Process(target=target, args=args, daemon=False)
        proc.start()
        return proc

    procs = [(_work, (False,), start(_work, False)) for _ in range(max(1, count))]
    procs.append((_watch, (interval,), start(_watch, interval)))

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for _target, _args, proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app = _supervisor_app()  # after the first forks: no worker inherits it
    while not stopping:
        restarted = False
        for n, (target, args, proc) in enumerate(procs):
            if not proc.is_alive() and not stopping:
                restarted = True
                print(
                    f"{target.__name__} process {proc.pid} exited ({proc.exitcode}); restarting",
                    flush=True,
                )
                if target is _work:
                    _release_ranges_of(app, proc.pid)
                procs[n] = (target, args, start(target, *args))
        if restarted:
            time.sleep(0.5)  # a child that cannot start is restarted twice a second, no faster
        else:
            # Wake as soon as a child exits (its sentinel becomes ready).
            wait([proc.sentinel for _target, _args, proc in procs], timeout=0.5)
    for _target, _args, proc in procs:
        proc.join(timeout=30)
