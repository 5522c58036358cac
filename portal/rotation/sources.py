"""Which keys a run moves items from, what it counts under them, and the run's keyring.

Every count goes through the registry of encrypted kinds (portal.chat.kinds), so a kind
added there is counted, moved and verified without a change here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import crypto
from portal.chat import counts, kinds
from portal.keys import operations as ops
from portal.keys import policy
from portal.keys.models import OrgKey
from portal.keys.service import load_keys
from portal.models import Organization
from portal.rotation.common import (
    DECRYPT_SAMPLE,
    MAX_SOURCE_KEYS,
    KeyServiceWait,
    RotationError,
    log_event,
)
from portal.rotation.models import RotationRun


def check_keys(
    session: Session, org: Organization, current_text: str, new_text: str
) -> tuple[bytes, bytes]:
    """Test Keys: prove the current key, and check the new one is valid and never used."""
    current = ops.read_key(current_text, field="current_key")
    new = ops.read_key(new_text, field="new_key")
    active = rotatable_key(session, org)
    prove_current(session, org, active, current)
    check_new_key(session, org, new, current)
    return current, new


def rotatable_key(session: Session, org: Organization) -> OrgKey:
    """The organisation's own active key, which a rotation replaces (or refuse)."""
    active = policy.active_key(session, org.id)
    if active is None or active.origin == "platform":
        raise RotationError("BYOK is not enabled: there is no key of yours to rotate.")
    return active


def prove_current(session: Session, org: Organization, active: OrgKey, current: bytes) -> None:
    """The pasted current key must be the active key and decrypt a stored item.

    A key held in the customer's key service cannot be pasted (nobody holds its data key):
    a full re-encryption replaces it without one, the admin having re-authenticated.
    """
    if active.external:
        raise RotationError(
            f"The active key is held in your key service ({active.custody}: {active.key_ref}); "
            "it cannot be pasted. Start a full re-encryption instead: it needs no current key.",
            field="current_key",
            code="external_active",
        )
    if crypto.key_id(current).hex() != active.key_id:
        raise RotationError(
            f"This is not the active key (its fingerprint is {active.fingerprint}).",
            field="current_key",
            code="not_active",
        )
    _decrypt_sample(session, org, current)


def check_new_key(
    session: Session, org: Organization, new: bytes, current: bytes | None = None
) -> None:
    """The new key must differ from the current one and from every key the org ever had."""
    if new == current:
        raise RotationError(
            "The new key must differ from the current key.", field="new_key", code="same_key"
        )
    if session.scalar(
        select(OrgKey.id).where(
            OrgKey.company_id == org.id, OrgKey.key_id == crypto.key_id(new).hex()
        )
    ):
        raise RotationError(
            "This key was used by your organisation before; use a new key.",
            field="new_key",
            code="reused",
        )
    if not crypto.self_test(new):
        raise RotationError("The new key failed the encrypt/decrypt test.", field="new_key")


def _decrypt_sample(session: Session, org: Organization, key: bytes) -> None:
    """Check the pasted current key against a few stored items that name it.

    The sample comes from the first kind, in registry order, with items under the key (the
    messages, when there are any). One item that decrypts proves the key. A damaged item
    must not block a rotation (the rotation lists it as failed and leaves it untouched), so
    the key is refused only when none of the sample decrypts.
    """
    kid = crypto.key_id(key).hex()
    ring = crypto.Keyring(key)
    for kind in kinds.all_kinds():
        model, column = kind.model, kind.columns[0]  # one column proves the key; keep it small
        sample = session.execute(
            select(model.id, getattr(model, column.attr))
            .where(model.company_id == org.id, model.key_id == kid)
            .order_by(model.id)
            .limit(DECRYPT_SAMPLE)
        ).all()
        if not sample:
            continue
        for row_id, blob in sample:
            aad = kinds.associated_data(org.id, kind.table, column.ad_name, row_id)
            try:
                ring.decrypt(blob, aad)
                return
            except crypto.DecryptionError:
                continue
        raise RotationError(
            "The current key does not decrypt a stored item.",
            field="current_key",
            code="sample_failed",
        )


def count_items(session: Session, company_id: uuid.UUID, key_ids: list[str]) -> dict[str, int]:
    """Items per kind under the given keys (from the per-key counters: no scan)."""
    held = counts.item_counts(session, company_id)
    return {
        kind.name: sum(held.get(k, {}).get(kind.name, 0) for k in key_ids)
        for kind in kinds.all_kinds()
    }


@dataclass
class Sources:
    """The keys a run to a target key moves items from, and the items nobody can move.

    Every key but the target is a source, whatever put items under it: the key active when
    the run started, an older key a cancelled run left behind, platform keys, a BYOK key
    from before a Disable and re-Enable, a key restored from a backup. Only keys that can
    still decrypt are moved from; items under a lost, unavailable or retired key are counted
    and reported, and left exactly as they are.
    """

    keys: list[str]  # hex ids of the readable keys, most items first
    counts: dict[str, dict[str, int]]  # items per kind under every non-target key
    states: dict[str, str]  # the effective state of every key of the organisation
    unmovable: dict[str, int] = field(default_factory=dict)  # key id -> items it holds
    # Keys a key service refused or did not answer for: key id -> (reason code, its message).
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)
    retry_after: int = 0

    def items(self, key_id: str) -> int:
        """Items under one key, all kinds together."""
        return sum(self.counts.get(key_id, {}).values())

    def wait(self) -> KeyServiceWait | None:
        """Why items cannot be moved *now* (their key service refused or did not answer)."""
        held = [k for k in self.unmovable if k in self.waiting]
        if not held:
            return None
        code, reason = self.waiting[held[0]]
        return KeyServiceWait(code, reason, self.retry_after)


def sources(session: Session, company_id: uuid.UUID, target: str) -> Sources:
    """Find every key whose items a run to ``target`` must move (from the key_id indexes)."""
    loaded = load_keys(session, company_id)
    states = {row.key_id: loaded.effective_state(row) for row in loaded.rows}
    others = [k for k in states if k != target]
    counts = _counts_by_key(session, company_id, others) if others else {}
    readable = [k for k in others if states[k] == "decrypt_only"]
    readable.sort(key=lambda k: -sum(counts.get(k, {}).values()))  # stable: oldest first
    waiting = {
        k: (code, loaded.reasons.get(k, code))
        for k, code in loaded.codes.items()
        if code in crypto.TEMPORARY_FAILURES
    }
    found = Sources(readable, counts, states, waiting=waiting, retry_after=loaded.retry_after)
    found.unmovable = {k: found.items(k) for k in others if k not in readable and found.items(k)}
    return found


def _counts_by_key(
    session: Session, company_id: uuid.UUID, key_ids: list[str]
) -> dict[str, dict[str, int]]:
    """Items per key and kind under the given keys (from the per-key counters: no scan)."""
    held = counts.item_counts(session, company_id)
    return {k: held[k] for k in key_ids if k in held}


def source_list(found: Sources, first: str | None = None) -> list[str]:
    """The key ids a run records as its sources (the one it must retire first, if given)."""
    keys = ([first] if first else []) + [k for k in found.keys if k != first]
    return keys[:MAX_SOURCE_KEYS]


def report_unmovable(session: Session, run: RotationRun, found: Sources) -> int:
    """Note in the run's history each key whose items cannot be moved; return how many."""
    for key_id, n in found.unmovable.items():
        state = found.states.get(key_id, "unknown")
        log_event(
            session,
            run,
            f"{n} items under key {crypto.fingerprint(bytes.fromhex(key_id))} ({state}) cannot "
            "be moved: no usable copy of that key can decrypt them; they are left as they are",
        )
    return sum(found.unmovable.values())


def log_sources(session: Session, run: RotationRun, keys: list[str], found: Sources) -> None:
    """Note in the run's history the keys it moves items from (beyond the one it replaces)."""
    listed = [k for k in keys if found.items(k)]
    if listed:
        moving = ", ".join(
            f"{crypto.fingerprint(bytes.fromhex(k))} ({found.items(k)} items)" for k in listed
        )
        log_event(session, run, f"Moving the items under {moving}"[:400])


def fingerprints(key_ids: list[str]) -> list[str]:
    """Fingerprints of hex key ids, as people see them."""
    return [crypto.fingerprint(bytes.fromhex(k)) for k in key_ids if k]


def keyring_for_run(session: Session, run: RotationRun) -> crypto.Keyring:
    """The organisation's keyring: the old keys decrypt, the run's new key encrypts.

    Raises KeyServiceWait when a key service refused or did not answer for a key the run
    needs: its items are not failures, the range waits for the service.
    """
    loaded = load_keys(session, run.company_id)
    for key_id in [*run.old_key_ids.split(","), run.new_key_id]:
        code = loaded.codes.get(key_id)
        if code in crypto.TEMPORARY_FAILURES:
            raise KeyServiceWait(code, loaded.reasons.get(key_id, code), loaded.retry_after)
    if loaded.keyring.encrypting_key_id is None or (
        loaded.keyring.encrypting_key_id.hex() != run.new_key_id
    ):
        raise RotationError("The run's new key is not the organisation's active key.")
    return loaded.keyring
