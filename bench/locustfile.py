"""Locust users for bench/load.py (run by it; not meant to be started by hand).

Three kinds of user, each at a fixed pace so the offered load is known and the figures are
latencies at that load rather than the length of a queue. Each user starts at a random
moment within its first interval, as independent people do: Locust starts a batch of users
at once, and in lockstep they would all send at the same instant every time.

- ``RunWatcher``: an admin with a rotation's page open; htmx polls the progress fragment
  once a second (only while a run is measured).
- ``PageUser``: an admin clicking through the portal: the compliance page every 2 s.
- ``ApiClient``: the chat platform's backend on the data API: 4 requests a second, three
  reads of a conversation's last 50 messages to two message writes.

Configuration comes from the environment bench/load.py sets: LOAD_COOKIE (a signed-in
session), LOAD_TOKEN (an API token), LOAD_CONVERSATIONS (ids, comma-separated),
LOAD_RUN_ID (the rotation run, when one is measured) and LOAD_WATCHERS / LOAD_PAGE_USERS /
LOAD_API_CLIENTS (how many of each).
"""

from __future__ import annotations

import json
import os
import random
import time

import gevent
from locust import FastHttpUser, task

COOKIE_NAME, _, COOKIE_VALUE = os.environ.get("LOAD_COOKIE", "").partition("=")
TOKEN = os.environ.get("LOAD_TOKEN", "")
CONVERSATIONS = os.environ.get("LOAD_CONVERSATIONS", "").split(",")
RUN_ID = os.environ.get("LOAD_RUN_ID", "")
BODY = json.dumps({"body": "load " * 40, "author": "bench"})


class _Paced(FastHttpUser):
    """A user on a fixed schedule, one request every ``pace`` seconds from a random start."""

    abstract = True
    pace = 1.0
    headers: dict[str, str] = {}

    def on_start(self) -> None:
        """Wait a random part of one interval, so users do not send in lockstep."""
        gevent.sleep(random.uniform(0, self.pace))
        self.next_at = time.monotonic()

    def wait_time(self) -> float:
        """Until the next slot of the schedule (at once if a request overran its slot)."""
        self.next_at += self.pace
        return max(0.0, self.next_at - time.monotonic())


class _SignedIn(_Paced):
    """A browser session of the benchmark's admin (signed in once, by bench/load.py)."""

    abstract = True
    headers = {"Cookie": f"{COOKIE_NAME}={COOKIE_VALUE}"}


class RunWatcher(_SignedIn):
    """The run page's htmx poll: the progress fragment, once a second."""

    fixed_count = int(os.environ.get("LOAD_WATCHERS", "0"))
    pace = 1.0

    @task
    def progress_fragment(self) -> None:
        """GET the fragment as htmx does (286 answers the last poll, and is a success)."""
        self.client.get(
            f"/rotations/{RUN_ID}/progress",
            headers={**self.headers, "HX-Request": "true"},
            name="progress_fragment",
        )


class PageUser(_SignedIn):
    """An admin on the compliance page."""

    fixed_count = int(os.environ.get("LOAD_PAGE_USERS", "0"))
    pace = 2.0

    @task
    def compliance_page(self) -> None:
        """The whole page: key status, counts, the wizard."""
        self.client.get("/settings/compliance", headers=self.headers, name="compliance_page")


class ApiClient(_Paced):
    """The chat platform reading and writing conversations through the data API."""

    fixed_count = int(os.environ.get("LOAD_API_CLIENTS", "0"))
    pace = 0.25
    headers = {"Authorization": f"Bearer {TOKEN}"}

    @task(3)
    def api_read(self) -> None:
        """A conversation with its last 50 messages, decrypted."""
        conversation = random.choice(CONVERSATIONS)
        self.client.get(
            f"/api/v1/conversations/{conversation}?limit=50", headers=self.headers, name="api_read"
        )

    @task(2)
    def api_write(self) -> None:
        """A new message, encrypted under the organisation's current key."""
        conversation = random.choice(CONVERSATIONS)
        self.client.post(
            f"/api/v1/conversations/{conversation}/messages",
            data=BODY,
            headers={**self.headers, "Content-Type": "application/json"},
            name="api_write",
        )
