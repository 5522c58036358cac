"""A run's ranges are equal runs of the organisation's ids, old random ones and new
time-ordered ones alike, so that several workers rewrite one organisation at once."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from portal import crypto
from portal.chat import service as chat
from portal.chat.models import Message
from portal.db import get_session
from portal.rotation.models import RotationRange
from tests.support.rotation import enable_byok, key_ids, run_worker, seed, start_and_enqueue


def _ranges(app, run_id) -> list[RotationRange]:
    with app.app_context():
        return list(
            get_session().scalars(
                select(RotationRange)
                .where(RotationRange.run_id == run_id, RotationRange.kind == "messages")
                .order_by(RotationRange.seq)
            )
        )


def test_ranges_split_the_ids_evenly_and_cover_every_row(app, orgs, monkeypatch):
    org = orgs["a"]["id"]
    app.config.update(ROTATION_MIN_RANGES=4)
    old = enable_byok(app, org)
    with monkeypatch.context() as patched:  # rows from before #14: random version-4 ids
        patched.setattr(chat, "new_id", uuid.uuid4)
        seed(app, org, conversations=2, messages=2_500, attachments=0)
    seed(app, org, conversations=2, messages=2_500, attachments=0)  # time-ordered ids
    seed(app, orgs["b"]["id"], conversations=1, messages=300, attachments=0)
    new = crypto.generate_key()
    run_id = start_and_enqueue(app, org, old, new)
    ranges = _ranges(app, run_id)
    assert len(ranges) == 4
    assert ranges[0].lo is None and ranges[-1].hi is None
    assert all(a.hi == b.lo for a, b in zip(ranges, ranges[1:], strict=False))
    with app.app_context():
        ids = sorted(
            get_session().scalars(select(Message.id).where(Message.company_id == org)).all()
        )
    sizes = [
        sum(1 for i in ids if (r.lo is None or i >= r.lo) and (r.hi is None or i < r.hi))
        for r in ranges
    ]
    assert sum(sizes) == len(ids) == 10_000
    assert max(sizes) - min(sizes) <= 1, sizes
    run_worker(app)
    assert key_ids(app, org) == {crypto.key_id(new).hex()}
    assert all(r.done == s for r, s in zip(_ranges(app, run_id), sizes, strict=True))


def test_a_small_run_stays_one_range(app, orgs):
    org = orgs["a"]["id"]
    old = enable_byok(app, org)
    seed(app, org, conversations=1, messages=30, attachments=0)
    run_id = start_and_enqueue(app, org, old, crypto.generate_key())
    assert len(_ranges(app, run_id)) == 1
