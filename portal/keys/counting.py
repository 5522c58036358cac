"""Which items the per-key counters call early: written under a platform key before the
organisation's first own key (portal/chat/counts.py asks; only portal.keys knows keys).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Connection, select

from portal.chat import counts
from portal.keys.models import OrgKey

# A platform key's items are all early while the organisation has no key of its own.
NO_OWN_KEY_YET = datetime.max.replace(tzinfo=UTC)


# Organisations with a key of their own: their cutoffs never change (see early_cutoffs).
_settled: dict[uuid.UUID, counts.Cutoffs] = {}


def early_cutoffs(conn: Connection, company_id: uuid.UUID) -> counts.Cutoffs:
    """Per platform key of the organisation, the time its items stop being early.

    Once the organisation has a key of its own, the answer is final: the first own key's
    creation never moves, and a platform key made after it holds no item written before
    it. So it is kept in process memory from then on, and a write costs no lookup.
    """
    if company_id in _settled:
        return _settled[company_id]
    rows = conn.execute(
        select(OrgKey.key_id, OrgKey.origin, OrgKey.created_at).where(
            OrgKey.company_id == company_id
        )
    ).all()
    own = [counts.aware(created) for _, origin, created in rows if origin != "platform"]
    cutoff = min(own) if own else NO_OWN_KEY_YET
    found = {key_id: cutoff for key_id, origin, _ in rows if origin == "platform"}
    if own:
        _settled[company_id] = found
    return found


counts.set_cutoffs(early_cutoffs)
