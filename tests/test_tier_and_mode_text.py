"""The compliance page explains an isolated tier on a shared installation."""

from __future__ import annotations

import re

import pytest

from tests.support.web import login

CASES = [
    # (deployment mode, tier, whether the page must explain the pair)
    ("shared", "dedicated", True),
    ("shared", "on_prem", True),
    ("shared", "org_community", False),
    ("dedicated", "org_community", False),
    ("on_prem", "on_prem", False),
]


def _compliance_page(app, password_hash: str, tier: str) -> str:
    """Sign in as the admin of a new organisation of ``tier``; return its compliance page."""
    from portal.db import get_session
    from portal.models import User
    from portal.orgs import create_org

    with app.app_context():
        db = get_session()
        org = create_org(db, f"Tier {tier}", tier)
        email = f"admin@{org.slug}.example"
        db.add(User(email=email, password_hash=password_hash, role="admin", company_id=org.id))
        db.commit()
    client = app.test_client()
    assert login(client, email).status_code == 302
    response = client.get("/settings/compliance")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _text(html: str, testid: str) -> str | None:
    """The text of the element with a data-testid, tags dropped and spaces collapsed."""
    match = re.search(rf'data-testid="{testid}"[^>]*>(.*?)</(?:p|dd)>', html, re.S)
    if match is None:
        return None
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())


@pytest.mark.parametrize(
    ("deployment", "tier", "explained"), CASES, ids=[f"{d}-{t}" for d, t, _ in CASES]
)
def test_isolated_tier_beside_a_shared_deployment_mode_is_explained(
    app, app_config, password_hash, deployment, tier, explained
):
    from portal import create_app

    deployed = create_app({**app_config, "BYOK_DEPLOYMENT": deployment})  # `app` cleans up
    try:
        html = _compliance_page(deployed, password_hash, tier)
    finally:
        deployed.extensions["db_engine"].dispose()
    assert _text(html, "deployment-mode") == deployment
    shown_tier = _text(html, "deployment-tier")
    note = _text(html, "tier-note")
    if not explained:
        assert note is None, note
        return
    assert shown_tier == "Dedicated (isolated)"
    assert note is not None, "an isolated tier beside 'shared' needs a word of explanation"
    # It says what each of the two means: the organisation's tier, the installation's mode.
    for words in ("tier", "BYOK is required", "its own key", "installation", "shared"):
        assert words in note, (words, note)
