"""Running the portal's two process types: the web server and the RQ workers."""

from __future__ import annotations

import multiprocessing
import signal
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer


def run_gunicorn(bind: str, workers: int) -> None:
    """Serve ``wsgi:app`` with gunicorn; the access log leaves out query strings."""
    from gunicorn.app.base import BaseApplication

    from portal import create_app

    class Portal(BaseApplication):
        """gunicorn application that serves the portal's app factory."""

        def load_config(self) -> None:
            """Apply the portal's gunicorn defaults."""
            settings: dict[str, Any] = {
                "bind": bind,
                "workers": workers,
                "timeout": 60,
                "graceful_timeout": 30,
                "accesslog": "-",
                "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
                "forwarded_allow_ips": "*",
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            """Build the app once per worker."""
            return create_app()

    Portal().run()


def make_queue(connection: Redis, name: str) -> Queue:
    """Return the portal's job queue (JSON serializer: jobs carry ids, never secrets)."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


def _work(burst: bool) -> None:
    """Run one RQ worker with the scheduler inside the app's context."""
    from portal import create_app
    from portal.redis_conn import connect

    app = create_app()
    with app.app_context():
        from jobs.context import set_app
        from jobs.rotation import resume_active_runs

        set_app(app)
        connection = connect(app)
        queue = make_queue(connection, app.config["RQ_QUEUE"])
        # The database is the source of truth: whatever Redis lost, a new worker re-queues.
        resumed = resume_active_runs(app)
        if resumed:
            print(f"resumed rotation runs: {', '.join(resumed)}", flush=True)
        Worker([queue], connection=connection, serializer=JSONSerializer).work(
            burst=burst, with_scheduler=True
        )


def run_workers(count: int, burst: bool) -> None:
    """Run ``count`` workers; with more than one, each in its own process."""
    if count <= 1:
        _work(burst)
        return
    procs = [multiprocessing.Process(target=_work, args=(burst,)) for _ in range(count)]
    for proc in procs:
        proc.start()

    def _stop(_signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for proc in procs:
        proc.join()
