"""The data API keeps serving while a real worker process rotates the key underneath it.

A writer thread adds messages and conversations and edits stored messages, a reader thread
reads conversations continuously, both through the data API, for the whole run. Nothing may
fail to read, everything written during the run must end under the new key, and an edit made
while the rotation runs must survive it (compare-and-swap).
"""

from __future__ import annotations

import bisect
import hashlib
import random
import threading
import time
import uuid

import pytest
from sqlalchemy import select

from portal import crypto
from portal.chat import service as chat
from portal.chat.models import Conversation, Message
from portal.db import get_session
from portal.rotation.models import RotationRange
from portal.rotation.queue import enqueue_ranges
from tests.support.faults import (
    WorkerGroup,
    bulk_seed,
    cli_status,
    diagnose,
    private_queue,
    process_env,
    set_throttle,
    start_run,
    wait_for_end,
)
from tests.support.rotation import enable_byok, key_ids, plaintext_digest

SEEDED_MESSAGES = 6_000
BATCH = 1_000  # big batches: a wide window between a batch's read and its write


@pytest.fixture(autouse=True)
def own_queue(app_config):
    """An RQ queue of this test's own (set before the app is built)."""
    return private_queue(app_config)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Traffic:
    """What the API threads did, and everything that went wrong (shared, under a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.running = threading.Event()  # set while the run is active
        self.errors: list[str] = []
        self.reads = self.reads_during_run = 0
        self.writes_during_run = self.edits_during_run = self.edits_of_old_items = 0
        self.written: dict[str, str] = {}  # message id -> body
        self.new_conversations: list[str] = []
        # Every body an edited message has had (a read may race the next edit).
        self.edit_history: dict[str, list[str]] = {}

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def _writer(app, token: str, convs: list[str], next_batch, old_kid: str, t: Traffic):
    """Add messages, now and then a conversation, and edit stored messages, until stopped.

    Edits aim at the rows the worker reads next, so that some land between its read and its
    write of a batch: only the compare-and-swap keeps those edits.
    """
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    rnd = random.Random(1)
    i = 0
    while not t.stop.is_set():
        i += 1
        during = t.running.is_set()
        if i % 7 == 0:
            r = client.post(
                "/api/v1/conversations",
                json={"title": f"made during the run {i}", "metadata": {"i": i}},
                headers=auth,
            )
            if r.status_code != 201:
                t.error(f"POST conversation -> {r.status_code} {r.get_data(as_text=True)[:200]}")
                continue
            with t.lock:
                t.new_conversations.append(r.get_json()["id"])
                convs = convs + [r.get_json()["id"]]
        target = rnd.choice(next_batch())
        with app.app_context():
            was_old = (
                get_session().scalar(select(Message.key_id).where(Message.id == uuid.UUID(target)))
                == old_kid
            )
        body = f"edited during the run #{i} ✎"
        with t.lock:
            t.edit_history.setdefault(target, []).append(body)
        r = client.patch(f"/api/v1/messages/{target}", json={"body": body}, headers=auth)
        if r.status_code != 200:
            t.error(f"PATCH message -> {r.status_code} {r.get_data(as_text=True)[:200]}")
            continue
        with t.lock:
            t.edits_during_run += during
            t.edits_of_old_items += during and was_old
        conv = rnd.choice(convs)
        body = f"written while rotating {i} " + "ü" * (i % 9)
        r = client.post(
            f"/api/v1/conversations/{conv}/messages",
            json={"author": "writer", "body": body},
            headers=auth,
        )
        if r.status_code != 201:
            t.error(f"POST message -> {r.status_code} {r.get_data(as_text=True)[:200]}")
            continue
        with t.lock:
            t.written[r.get_json()["id"]] = body
            t.writes_during_run += during


def _reader(app, token: str, convs: list[str], plain: dict[str, str], t: Traffic):
    """Read the conversation list and whole conversations, checking every body, until stopped."""
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    rnd = random.Random(2)
    while not t.stop.is_set():
        during = t.running.is_set()
        with t.lock:
            pool = convs + t.new_conversations
        listing = client.get("/api/v1/conversations?limit=100", headers=auth)
        one = client.get(f"/api/v1/conversations/{rnd.choice(pool)}?limit=500", headers=auth)
        for r in (listing, one):
            if r.status_code != 200 or "unreadable" in r.get_data(as_text=True):
                t.error(f"GET {r.request.path} -> {r.status_code} {r.get_data(as_text=True)[:300]}")
        for m in (one.get_json() or {}).get("messages", []):
            with t.lock:
                history = list(t.edit_history.get(m["id"], []))
                written = t.written.get(m["id"])
            body = m["body"] if isinstance(m["body"], str) else repr(m["body"])
            if history:
                ok = body in history or _sha(body) == plain.get(m["id"])
            elif written is not None:
                ok = body == written
            else:
                ok = _sha(body) == plain.get(m["id"])
            if not ok:
                t.error(f"message {m['id']} read back as {body[:80]!r}")
        with t.lock:
            t.reads += 2
            t.reads_during_run += 2 * during


def _message_plaintexts(app, org_id) -> dict[str, str]:
    """sha256 of every message body of the organisation, by id."""
    out = {}
    with app.app_context():
        db = get_session()
        reader = chat.Reader(db, org_id)
        for m in db.scalars(select(Message).where(Message.company_id == org_id)):
            body = reader.column(m, "body")
            out[str(m.id)] = hashlib.sha256(body).hexdigest()
    return out


def test_api_reads_and_writes_keep_working_through_a_rotation_and_edits_survive_it(
    app, app_config, orgs, tmp_path
):
    org = orgs["a"]["id"]
    old, new = enable_byok(app, org), crypto.generate_key()
    old_kid, new_kid = crypto.key_id(old).hex(), crypto.key_id(new).hex()
    bulk_seed(app, org, SEEDED_MESSAGES, 30, 10)
    plain = _message_plaintexts(app, org)
    before = plaintext_digest(app, org)
    with app.app_context():
        db = get_session()
        token = chat.create_token(db, org, "concurrency test")
        db.commit()
        convs = [
            str(c)
            for c in db.scalars(select(Conversation.id).where(Conversation.company_id == org))
        ]
    seeded = sorted(plain)
    env = process_env(app_config, ROTATION_BATCH_ROWS=str(BATCH))
    worker = WorkerGroup(env, tmp_path).start()
    run_id = start_run(app, org, old, new)
    set_throttle(app, run_id, 2)  # ~2,000 items/s: the run lasts a few seconds

    def next_batch() -> list[str]:
        """The seeded messages the worker's next batch will read (after its checkpoint)."""
        with app.extensions["db_sessionmaker"]() as db:
            cursor = db.scalar(
                select(RotationRange.cursor).where(
                    RotationRange.run_id == run_id, RotationRange.kind == "messages"
                )
            )
        start = bisect.bisect_right(seeded, str(cursor)) if cursor else 0
        return seeded[start : start + BATCH] or seeded

    traffic = Traffic()
    threads = [
        threading.Thread(target=_writer, args=(app, token, convs, next_batch, old_kid, traffic)),
        threading.Thread(target=_reader, args=(app, token, convs, plain, traffic)),
    ]
    try:
        traffic.running.set()
        for thread in threads:
            thread.start()
        enqueue_ranges(app, run_id)
        run = wait_for_end(app, run_id, timeout=60, describe=lambda: worker.log()[-3000:])
        traffic.running.clear()
        time.sleep(0.5)  # and a little traffic after the end
    finally:
        traffic.stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=30)
        worker.kill()
    assert run.state == "completed", diagnose(app, run_id)
    assert traffic.errors == [], traffic.errors[:10]
    print(
        f"during the run: {traffic.reads_during_run} reads, {traffic.writes_during_run} writes, "
        f"{traffic.edits_during_run} edits ({traffic.edits_of_old_items} of not-yet-moved items)"
    )
    # The traffic really overlapped the run, and some edits raced the rotation of their item.
    assert traffic.reads_during_run >= 20 and traffic.writes_during_run >= 20
    assert traffic.edits_of_old_items >= 3
    status = cli_status(env, run_id)
    assert status["state"] == "completed" and status["failed"] == 0
    assert status["total"] == len(before)  # what was there at the start
    # (done == total is not asserted here: see the xfail test below.)
    # Everything, including what was written during the run, is under the new key...
    assert key_ids(app, org) == {new_kid}
    with app.app_context():
        written_keys = set(
            get_session().scalars(
                select(Message.key_id).where(
                    Message.id.in_([uuid.UUID(i) for i in traffic.written])
                )
            )
        )
    assert written_keys == {new_kid}
    # ... and every message decrypts to what it should: written, edited (last edit), or seeded.
    after = _message_plaintexts(app, org)
    assert len(after) == len(plain) + len(traffic.written)
    for mid, body in traffic.written.items():
        assert after[mid] == _sha(body)
    for mid, history in traffic.edit_history.items():
        assert after[mid] == _sha(history[-1]), f"the edit of {mid} was lost"
    for mid, digest in plain.items():
        if mid not in traffic.edit_history:
            assert after[mid] == digest
    everything = plaintext_digest(app, org)  # conversations and attachments too
    assert all(everything[k] == v for k, v in before.items() if k not in traffic.edit_history)


def test_a_completed_run_counts_an_item_edited_during_the_run_as_done(
    app, app_config, orgs, tmp_path
):
    org = orgs["a"]["id"]
    old, new = enable_byok(app, org), crypto.generate_key()
    bulk_seed(app, org, 50, 2, 1)
    with app.app_context():
        db = get_session()
        token = chat.create_token(db, org, "edit test")
        db.commit()
        target = str(db.scalar(select(Message.id).where(Message.company_id == org).limit(1)))
    run_id = start_run(app, org, old, new)
    edited = app.test_client().patch(
        f"/api/v1/messages/{target}",
        json={"body": "edited after the rotation started"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert edited.status_code == 200
    enqueue_ranges(app, run_id)
    env = process_env(app_config)
    worker = WorkerGroup(env, tmp_path).start()
    try:
        run = wait_for_end(app, run_id, timeout=30, describe=lambda: worker.log()[-3000:])
    finally:
        worker.kill()
    assert run.state == "completed", diagnose(app, run_id)
    assert _message_plaintexts(app, org)[target] == _sha("edited after the rotation started")
    status = cli_status(env, run_id)
    assert status["messages"]["done"] == status["messages"]["total"] == 50, status
    assert status["done"] == status["total"], status
