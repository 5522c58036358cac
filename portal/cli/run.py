"""Running the portal: the web server, the workers and the demo (no app context needed)."""

from __future__ import annotations

import click

from portal.demo import DEFAULT_ITEMS as DEMO_ITEMS


@click.command()
@click.option(
    "--bind",
    default=None,
    help="Defaults to 127.0.0.1:8000, or what GUNICORN_CMD_ARGS or a gunicorn config file says.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Defaults to one per CPU (at least 2), or GUNICORN_CMD_ARGS / a gunicorn config file.",
)
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the portal with gunicorn."""
    from portal.serving import run_gunicorn

    run_gunicorn(bind, workers)


@click.command()
@click.option("--count", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def worker(count: int, burst: bool) -> None:
    """Run RQ workers on REDIS_URL."""
    from portal.serving import run_workers

    run_workers(count, burst)


@click.command()
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--items",
    type=click.IntRange(0, 1_000_000),
    default=DEMO_ITEMS,
    show_default=True,
    help="Items seeded for Acme Org Community, which can switch BYOK on with data in place, "
    "when it is created (the default keeps a rotation's progress on screen for about 20 s).",
)
def demo(port: int, host: str, items: int) -> None:
    """Set up demo organisations and users, then serve the portal with a worker."""
    from portal.demo import run_demo

    run_demo(host, port, items)


COMMANDS = (serve, worker, demo)
