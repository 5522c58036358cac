"""Keys held in the customer's key service, from the command line.

The operations behind ``key connect``, ``key rotate --rewrap`` / ``--to-provider`` /
``--to-sealed`` and the key-service lines of ``key status``; the commands themselves are
on the ``key`` group in portal/cli/keys.py. Every operation is the wizard's (same checks,
messages and audit events); nothing here prints key material: fingerprints, key references
and versions only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy.orm import Session

from portal.cli.common import ACTOR, db, org_or_fail
from portal.models import Organization

Operation = Callable[[Session, Organization], str]


def connect_operation(
    provider: str, key_ref: str, role_arn: str | None, as_json: bool
) -> Operation:
    """Test the customer's key, then make a data key wrapped by it the encrypting key."""
    from portal.keys import external

    def run(session: Session, org: Organization) -> str:
        info = external.test_connection(session, org, ACTOR, provider, key_ref, role_arn)
        # What connect must find it was given: the reference exactly as read for the test.
        tested = external.tested_marker(provider, key_ref.strip(), (role_arn or "").strip() or None)
        row = external.connect(session, org, ACTOR, provider, key_ref, role_arn, tested=tested)
        if as_json:
            return json.dumps(
                {
                    "organization": org.slug,
                    "fingerprint": row.fingerprint,
                    "state": row.state,
                    "origin": row.origin,
                    "custody": row.custody,
                    "key_ref": row.key_ref,
                    "role_arn": row.role_arn,
                    "version": info.version,
                    "detail": info.detail,
                },
                indent=2,
            )
        return (
            f"BYOK enabled for {org.slug} with key {row.fingerprint} (external)\n"
            f"custody: {row.custody}, key {row.key_ref}"
            + (f" (role {row.role_arn})" if row.role_arn else "")
            + f"\nkey service: version {info.version} ({info.detail})"
        )

    return run


def custody_lines(info: dict[str, Any]) -> list[str]:
    """Where the active key's key-encryption key lives and what its service answered."""
    if info["custody"] == "sealed":
        return ["custody: sealed (this installation's master key)"]
    detail = info.get("key_service_detail") or {}
    label = detail.get("ref_label") or "key"
    lines = [f"custody: {info['custody']}, {label} {info['key_ref']}"]
    state = info["key_service"] or "unknown"
    version = detail.get("version")
    said = f"key service: {state}" + (f", version {version}" if version else "")
    if detail.get("error") and state != "reachable":
        said += f" ({detail['error']})"
    lines.append(said)
    lines.append(f"last success: {detail.get('last_success') or '-'}")
    lines.append(f"cache expires: {detail.get('cache_expires') or 'not cached'}")
    return lines


def rotate_mode(
    rewrap: bool,
    to_provider: str | None,
    to_sealed: bool,
    key_ref: str | None,
    role_arn: str | None,
) -> str:
    """Which rotation the flags ask for ("sealed", "rewrap" or "reencrypt"), or a usage error."""
    chosen = [
        flag
        for flag, given in (
            ("--rewrap", rewrap),
            ("--to-provider", to_provider),
            ("--to-sealed", to_sealed),
        )
        if given
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} exclude each other: choose one.")
    if to_provider and not key_ref:
        raise click.UsageError("--to-provider needs --key-ref: the key to wrap the new data key.")
    if (key_ref or role_arn) and not (rewrap or to_provider):
        raise click.UsageError("--key-ref and --role-arn go with --rewrap or --to-provider.")
    if rewrap and role_arn and not key_ref:
        raise click.UsageError(
            "--role-arn with --rewrap goes with a new --key-ref (the current key keeps its role)."
        )
    if rewrap:
        return "rewrap"
    return "reencrypt" if to_provider or to_sealed else "sealed"


def rewrap_operation(key_ref: str | None, role_arn: str | None) -> Operation:
    """Re-wrap every stored data key of the active key's service; no data row is touched."""
    from portal.keys import external

    def run(session: Session, org: Organization) -> str:
        rows = external.rewrap(session, org, ACTOR, key_ref, role_arn)
        target = rows[0]
        version = _version_of(target)
        return (
            f"re-wrapped {len(rows)} data key{'s' if len(rows) != 1 else ''} "
            f"({', '.join(r.fingerprint for r in rows)}) under {target.custody} key "
            f"{target.key_ref}"
            + (f" version {version}" if version else "")
            + "; no data was re-encrypted"
        )

    return run


def _version_of(row: Any) -> str | None:
    """The version of the row's key in its service now, or None when it does not say."""
    from portal.keys.custody import CustodyError
    from portal.keys.wrapped import client_for, row_ref

    try:
        return client_for(row.custody).describe(row_ref(row)).version
    except CustodyError:
        return None


def active_is_sealed(org_slug: str) -> bool:
    """Whether the organisation's own key is sealed here (so its current key must be typed)."""
    from portal.keys import policy

    session = db()
    org = org_or_fail(session, org_slug)
    active = policy.active_key(session, org.id)
    return active is not None and active.origin != "platform" and not active.external


def reencryption_start(
    to_provider: str | None,
    key_ref: str | None,
    role_arn: str | None,
    current_text: str | None,
    new_text: str | None,
) -> Callable[[Session, Organization], Any]:
    """Start a full re-encryption onto a new data key in a key service, or a new sealed key."""
    from portal.keys.external import read_ref
    from portal.rotation.reencrypt import start_reencryption

    def start(session: Session, org: Organization) -> Any:
        target = read_ref(org.id, to_provider, key_ref, role_arn) if to_provider else None
        return start_reencryption(
            session, org, ACTOR, target=target, new_text=new_text, current_text=current_text
        )

    return start
