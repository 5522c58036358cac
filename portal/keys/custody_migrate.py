"""Moving sealed keys from the master key file to the master key in Transit or an HSM.

``migrate`` re-seals, in the caller's transaction, every key row sealed by ``master-key`` (the
file or ``BYOK_MASTER_KEY``) under the master key service the installation now runs
(``master-key:vault-transit`` or ``master-key:pkcs11``, chosen by MASTER_KEY_PROVIDER and
MASTER_KEY_REF). Each key is unsealed with the file master key and wrapped by the service; the
key itself is never written anywhere. Rows without a sealed copy (retired, revoked) are left as
they are; a row the file master key cannot open is reported and left under it. Organisations'
own external keys are not touched: their custody is the customer's service.

Before any row changes, the target is proven with a wrap and an uncached unwrap, so a service
that is down or allows encrypt but not decrypt refuses the whole run. The audit signing key
derived from the file master key is wrapped into ``BYOK_HOME/audit-signing.key.wrapped`` so that
chains keep verifying once the key file is gone (portal/keys/custody/master_service.py).

Each organisation gets one ``BYOK.custody_migrated`` event with the counts and the backend
names. Afterwards the operator removes the key file from the servers, keeping a copy offline
for as long as database backups from before the move are kept: those still need it.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import crypto
from portal.audit.actions import Action
from portal.events import emit
from portal.keys import custody as registry
from portal.keys.custody import CustodyError, master_service
from portal.keys.models import OrgKey
from portal.keys.service import forget_cached_keys, seal_context

SOURCE = registry.DEFAULT


class MigrationRefused(RuntimeError):
    """The migration cannot run; nothing was changed (the caller rolls back)."""


def target_name(provider: str) -> str:
    """The backend name of a master key provider ('vault-transit' -> 'master-key:...')."""
    return master_service.NAMES.get(provider, f"{SOURCE}:{provider}")


def _target(to_backend_name: str) -> master_service.MasterServiceCustody:
    """The running target backend, proven to wrap and unwrap, or MigrationRefused saying why."""
    configured = current_app.config.get("MASTER_KEY_PROVIDER") or "file"
    if to_backend_name not in master_service.NAMES.values():
        raise MigrationRefused(
            f"{to_backend_name!r} is not a master key service (MASTER_KEY_PROVIDER={configured}): "
            f"set MASTER_KEY_PROVIDER to {' or '.join(master_service.PROVIDERS)} with "
            "MASTER_KEY_REF and the service's connection settings, then run this again"
        )
    provider = to_backend_name.split(":", 1)[1]
    backends = current_app.extensions.get("custody_backends", {})
    target = backends.get(to_backend_name)
    if target is None:
        raise MigrationRefused(
            f"the master key is not in {provider} here (MASTER_KEY_PROVIDER={configured}): set "
            f"MASTER_KEY_PROVIDER={provider} and MASTER_KEY_REF to the master key's "
            f"{'Transit key name' if provider == 'vault-transit' else 'PKCS#11 label'}, "
            "with the service's connection settings, then run this again"
        )
    try:
        target.check()
    except CustodyError as exc:
        raise MigrationRefused(f"nothing was re-sealed: {exc}") from None
    return target


def _carry_audit_key(target: master_service.MasterServiceCustody, source_loaded: bool) -> str:
    """Wrap the audit signing key derived from the file master key; say what was done."""
    key = current_app.extensions.get("audit_signing_key")
    if not source_loaded or key is None:
        return "unchanged"
    client = master_service.running_client(target.ref.provider)
    return f"wrapped into {master_service.store_audit_key(current_app.config, client, key)}"


def migrate(session: Session, actor: Any, to_backend_name: str) -> dict[str, Any]:
    """Re-seal every key sealed by the file master key under the master key service."""
    target = _target(to_backend_name)
    source = current_app.extensions.get("custody_backends", {}).get(SOURCE)
    rows = list(
        session.scalars(
            select(OrgKey)
            .where(OrgKey.custody == SOURCE)
            .order_by(OrgKey.company_id, OrgKey.created_at)
        )
    )
    if source is None and any(r.sealed is not None for r in rows):
        raise MigrationRefused(
            "no file master key is loaded, so the keys sealed under it cannot be re-sealed: "
            "point BYOK_MASTER_KEY_FILE (or BYOK_MASTER_KEY) at it and run this again"
        )
    try:
        audit_key = _carry_audit_key(target, source is not None)
    except CustodyError as exc:
        raise MigrationRefused(f"the audit signing key could not be wrapped: {exc}") from None
    counts: dict[uuid.UUID, dict[str, int]] = {}
    unreadable: list[str] = []
    for row in rows:
        tally = counts.setdefault(row.company_id, {"resealed": 0, "skipped": 0, "unreadable": 0})
        if row.sealed is None:
            tally["skipped"] += 1
            continue
        context = seal_context(row.company_id, row.key_id)
        try:
            key = source.unseal(row.sealed, context)
        except CustodyError:
            key = None
        if key is None or crypto.key_id(key).hex() != row.key_id:
            tally["unreadable"] += 1
            unreadable.append(row.fingerprint)
            continue
        try:
            row.sealed = target.seal(key, context)
        except CustodyError as exc:
            raise MigrationRefused(
                f"re-sealing key {row.fingerprint} failed, so nothing was re-sealed: {exc}"
            ) from None
        row.custody = target.name
        tally["resealed"] += 1
    for company_id, tally in counts.items():
        details = {"from": SOURCE, "to": target.name, **tally}
        emit(session, Action.CUSTODY_MIGRATED, actor=actor, company_id=company_id, details=details)
    session.flush()
    forget_cached_keys()
    return {
        "from": SOURCE,
        "to": target.name,
        "master_key": str(target.ref),
        "organizations": len(counts),
        "resealed": sum(t["resealed"] for t in counts.values()),
        "skipped": sum(t["skipped"] for t in counts.values()),
        "unreadable": unreadable,
        "audit_signing_key": audit_key,
    }


def record_refused_migration(
    session: Session, actor: Any, to_backend_name: str, exc: Exception
) -> None:
    """Record a refused migration in the installation's own audit chain."""
    emit(
        session,
        Action.CUSTODY_MIGRATED,
        outcome="failure",
        actor=actor,
        details={"from": SOURCE, "to": to_backend_name, "reason": str(exc)},
    )


def status(session: Session) -> dict[str, Any]:
    """Where the master key lives, which backends run, and how many keys each one seals."""
    config = current_app.config
    ref = master_service.master_ref(config)
    backends = current_app.extensions.get("custody_backends", {})
    sealing = current_app.extensions.get("custody")
    counts = dict(
        session.execute(
            select(OrgKey.custody, func.count())
            .where(OrgKey.sealed.is_not(None), OrgKey.key_ref.is_(None))
            .group_by(OrgKey.custody)
        ).all()
    )
    service: dict[str, Any] | None = None
    if ref is not None:
        client = master_service.running_client(ref.provider)
        service = {"state": "not_started", "last_error": master_service.not_running(ref.provider)}
        if client is not None:
            # A failed ping raises; the client's health records what happened.
            with contextlib.suppress(CustodyError):
                client.ping()
            service = client.health().as_json()
    audit = current_app.extensions.get("audit_key_source")
    return {
        "master_key_provider": config.get("MASTER_KEY_PROVIDER") or "file",
        "master_key_ref": ref.ref if ref is not None else None,
        "master_key": current_app.extensions.get("master_key_source"),
        "sealing_backend": sealing.name if sealing is not None else None,
        "running_backends": sorted(backends),
        "file_master_key_loaded": SOURCE in backends,
        "sealed_keys": {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))},
        "awaiting_migration": counts.get(SOURCE, 0) if ref is not None else 0,
        "master_key_service": service,
        "audit_signing_key": {
            "source": getattr(audit, "name", None),
            "loaded": current_app.extensions.get("audit_signing_key") is not None,
            "problem": getattr(audit, "problem", None),
        },
    }
