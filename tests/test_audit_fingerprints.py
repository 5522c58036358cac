"""People see key ids only as fingerprints: audit details, rotation history, pages, CLI."""

from __future__ import annotations

from sqlalchemy import select, text

from portal import crypto
from portal.audit.models import AuditEvent
from portal.db import get_session
from portal.keys.models import OrgKey
from portal.models import Organization
from portal.rotation.models import RotationEvent, RotationRun
from portal.rotation.start import start_rotation
from tests.support.processes import run_cli
from tests.support.rotation import b64, enable_byok, run_worker, seed


def test_no_raw_key_id_reaches_people_after_a_rotation_with_a_failure(
    app, orgs, login_as, cli_env
) -> None:
    from portal.rotation.queue import enqueue_ranges

    org_a = orgs["a"]["id"]
    old = enable_byok(app, org_a)
    seed(app, org_a, conversations=2, messages=6, attachments=1)
    with app.app_context():
        db = get_session()
        # The last item by id, so the rotation's start-up sample still opens.
        victim = db.execute(text("SELECT id, body_ct FROM messages ORDER BY id DESC")).first()
        broken = bytes(victim.body_ct[:-1]) + bytes([victim.body_ct[-1] ^ 1])
        db.execute(
            text("UPDATE messages SET body_ct = :b WHERE id = :i"), {"b": broken, "i": victim.id}
        )
        db.commit()
        run = start_rotation(
            db, db.get(Organization, org_a), "cli", b64(old), b64(crypto.generate_key())
        )
        run_id = run.id
        db.commit()
    enqueue_ranges(app, run_id)
    run_worker(app)

    seen: list[str] = []
    with app.app_context():
        db = get_session()
        key_ids = set(db.scalars(select(OrgKey.key_id).where(OrgKey.company_id == org_a)))
        for event in db.scalars(select(AuditEvent).where(AuditEvent.company_id == org_a)):
            seen += [f"audit {event.action}: {event.details}", event.actor_label]
        seen += [f"history: {m}" for m in db.scalars(select(RotationEvent.message))]
        assert db.get(RotationRun, run_id).state in ("completed", "failed")
    assert len(key_ids) >= 3  # the platform key, the old and the new key
    assert any("decrypt_failed" in line for line in seen), seen

    admin = login_as("admin_a")
    for path in ("/settings/compliance", "/settings/audit?type=encryption_key", "/rotations"):
        seen.append(f"{path}: {admin.get(path).get_data(as_text=True)}")
    seen.append(admin.get(f"/rotations/{run_id}").get_data(as_text=True))
    seen.append(admin.get(f"/rotations/{run_id}/failures.csv").get_data(as_text=True))
    for args in (
        ("key", "status", "--org", "org-a"),
        ("key", "status", "--org", "org-a", "--json"),
        ("rotation", "status", str(run_id)),
        ("rotation", "list", "--org", "org-a"),
    ):
        result = run_cli(cli_env, *args)
        assert result.returncode == 0, result.stderr
        seen.append(f"{' '.join(args)}: {result.stdout}{result.stderr}")

    fingerprints = {crypto.fingerprint(bytes.fromhex(k)) for k in key_ids}
    assert any(fp in line for fp in fingerprints for line in seen)
    leaks = [(k, line[:200]) for k in key_ids for line in seen if k in line]
    assert not leaks, leaks
