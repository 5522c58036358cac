"""The per-key item counters (portal/chat/counts.py) always equal a real COUNT of the data:
after writes, batch writes, edits, deletes, rotations, a cancelled run, items a run could
not move, concurrent writers during a run, and when they are wrong, retirement refuses."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import delete, func, select, update

from portal import crypto
from portal.chat import counts, kinds
from portal.chat import service as chat
from portal.chat.models import KeyItemCount, Message
from portal.db import get_session
from portal.keys.models import OrgKey
from portal.rotation.controls import control
from portal.rotation.models import RotationRun
from tests.support.rotation import enable_byok, run_worker, seed, start_and_enqueue


def real_counts(app, org_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """Items per key and kind, counted in the data."""
    out: dict[str, dict[str, int]] = {}
    names = [kind.name for kind in kinds.all_kinds()]
    with app.app_context():
        db = get_session()
        for kind in kinds.all_kinds():
            model = kind.model
            rows = db.execute(
                select(model.key_id, func.count())
                .where(model.company_id == org_id)
                .group_by(model.key_id)
            )
            for key_id, n in rows:
                out.setdefault(key_id, dict.fromkeys(names, 0))[kind.name] = n
    return out


def counted(app, org_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """What the counters say."""
    with app.app_context():
        return counts.item_counts(get_session(), org_id)


def assert_exact(app, org_id: uuid.UUID) -> None:
    """The counters equal the data, for the organisation."""
    assert counted(app, org_id) == real_counts(app, org_id)


def _run_state(app, run_id) -> str:
    with app.app_context():
        return get_session().get(RotationRun, run_id).state


def test_counters_equal_the_data_through_every_kind_of_change(app, orgs):
    org, other = orgs["a"]["id"], orgs["b"]["id"]
    seed(app, org, conversations=2, messages=5, attachments=1)  # under the platform key
    seed(app, other, conversations=1, messages=3, attachments=0)
    assert_exact(app, org)
    k1 = enable_byok(app, org)
    with app.app_context():
        db = get_session()
        conv = chat.create_conversation(db, org, "after BYOK", {})
        ids = chat.add_messages(db, conv, [("user", f"batch {i}") for i in range(7)])
        old = db.scalar(select(Message).where(Message.company_id == org).order_by(Message.id))
        chat.edit_message(db, old, "edited: moves from the platform key to K1")
        db.commit()
        chat.delete_message(db, org, ids[0])
        db.commit()
    assert_exact(app, org)
    with app.app_context():
        db = get_session()
        first = db.scalar(select(Message.conversation_id).where(Message.company_id == org))
        assert chat.delete_conversation(db, org, first)
        db.rollback()  # a rolled-back delete changes no counter
    assert_exact(app, org)
    with app.app_context():
        db = get_session()
        assert chat.delete_conversation(db, org, first)
        db.commit()
    assert_exact(app, org)

    # A run that cannot move one item (damaged) and is otherwise complete.
    with app.extensions["db_engine"].begin() as conn:
        victim, donor = conn.execute(
            select(Message.id).where(Message.company_id == org).order_by(Message.id).limit(2)
        ).scalars()
        blob = conn.execute(select(Message.body_ct).where(Message.id == donor)).scalar()
        conn.execute(update(Message).where(Message.id == victim).values(body_ct=blob))
    k2 = crypto.generate_key()
    run_id = start_and_enqueue(app, org, k1, k2)
    assert_exact(app, org)
    run_worker(app)
    assert _run_state(app, run_id) == "completed"
    assert_exact(app, org)
    left = {k: v for k, v in counted(app, org).items() if k != crypto.key_id(k2).hex()}
    assert [v["messages"] for v in left.values()] == [1]  # the damaged item stays put

    # A cancelled run: nothing moved yet, or part of it, the counters follow.
    k3 = crypto.generate_key()
    run_id = start_and_enqueue(app, org, k2, k3)
    with app.app_context():
        db = get_session()
        control(db, db.get(RotationRun, run_id), "cancel", "cli")
        db.commit()
    run_worker(app)
    assert _run_state(app, run_id) == "cancelled"
    assert_exact(app, org)
    assert_exact(app, other)


def test_counters_stay_exact_with_writers_during_a_rotation(app, orgs):
    org = orgs["a"]["id"]
    k1 = enable_byok(app, org)
    seed(app, org, conversations=3, messages=40, attachments=1)
    stop, errors = threading.Event(), []

    def writer() -> None:
        """Write, edit and delete while the run's batches go by."""
        try:
            while not stop.is_set():
                with app.app_context():
                    db = get_session()
                    conv = chat.create_conversation(db, org, "meanwhile", {})
                    ids = chat.add_messages(db, conv, [("u", "a"), ("u", "b"), ("u", "c")])
                    db.commit()
                    msg = db.scalar(
                        select(Message).where(Message.company_id == org).order_by(func.random())
                    )
                    chat.edit_message(db, msg, "edited meanwhile")
                    db.commit()
                    chat.delete_message(db, org, ids[1])
                    db.commit()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    app.config.update(ROTATION_BATCH_ROWS=7)
    run_id = start_and_enqueue(app, org, k1, crypto.generate_key())
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        run_worker(app)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    run_worker(app)  # verification may have queued another pass
    assert _run_state(app, run_id) == "completed"
    assert_exact(app, org)
    assert crypto.key_id(k1).hex() not in counted(app, org)


def test_recount_rebuilds_the_counters_from_the_data(app, orgs):
    org = orgs["a"]["id"]
    seed(app, org, conversations=2, messages=4, attachments=1)
    enable_byok(app, org)
    seed(app, org, conversations=1, messages=3, attachments=0)
    expected = counted(app, org)
    with app.app_context():
        db = get_session()
        early = counts.early_items(db, org)
        db.execute(delete(KeyItemCount).where(KeyItemCount.company_id == org))
        db.commit()
        assert counts.item_counts(db, org) == {}
        assert counts.recount(db, org) == expected
        assert counts.early_items(db, org) == early == 2 + 8 + 2  # the data from before BYOK
        db.commit()
    assert_exact(app, org)


def test_a_key_is_not_retired_while_a_row_names_it_whatever_the_counters_say(app, orgs):
    """The retirement's last check asks the data: counters wrongly at zero destroy nothing."""
    from portal.rotation.sources import sources
    from portal.rotation.verify import _retire

    org = orgs["a"]["id"]
    k1 = enable_byok(app, org)
    seed(app, org, conversations=1, messages=6, attachments=0)
    k1_id = crypto.key_id(k1).hex()
    run_id = start_and_enqueue(app, org, k1, crypto.generate_key())
    with app.app_context():
        db = get_session()
        # As if a bug had lost K1's counters while every item is still under it.
        db.execute(
            delete(KeyItemCount).where(KeyItemCount.company_id == org, KeyItemCount.key_id == k1_id)
        )
        db.commit()
        run = db.get(RotationRun, run_id)
        found = sources(db, org, run.new_key_id)
        assert not found.items(k1_id)  # the counters (wrongly) say K1 is empty
        _retire(db, run, [k1_id], found)
        db.commit()
        key = db.scalar(select(OrgKey).where(OrgKey.key_id == k1_id))
        assert key.state == "decrypt_only" and key.sealed is not None
    assert_exact(app, org)  # and the counters were rebuilt from the data
    run_worker(app)
    assert _run_state(app, run_id) == "completed"
    assert_exact(app, org)
