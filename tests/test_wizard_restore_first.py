"""When a key is lost (or unavailable), Restore key comes before Enable BYOK on the page.

Restoring the saved key gives the data back; enabling a new one does not, so the step that
recovers the data is the one an admin meets first.
"""

from __future__ import annotations

import pytest

from tests.support.api import Api
from tests.support.html import by_testid, parse_html
from tests.support.wizard import PAGE, add_org, admin, app_config, deployment, new_key, sign_in  # noqa: F401 - fixtures


def section_order(html: str) -> list[str]:
    """Return the ids of the wizard's step forms in page order."""
    wanted = {"restore-form", "enable-form", "rotate-form"}
    return [n.attrs["id"] for n in parse_html(html).walk() if n.attrs.get("id") in wanted]


def test_restore_is_above_enable_after_the_key_is_declared_lost(app, admin, orgs):  # noqa: F811
    _, text, _ = new_key()
    admin.enable_ok(text)
    api = Api.for_org(app, orgs["a"]["id"])
    api.message(api.conversation(), "kept")
    assert section_order(admin.page()) == ["rotate-form"]
    lost = admin.confirm("lost", orgs["a"]["slug"])
    assert lost.status_code == 200
    assert section_order(lost.get_data(as_text=True)) == ["restore-form", "enable-form"]
    assert section_order(admin.page()) == ["restore-form", "enable-form"]
    section = admin.client.get(f"{PAGE}/byok").get_data(as_text=True)
    assert section_order(section) == ["restore-form", "enable-form"]


@pytest.mark.parametrize("tier", ["dedicated", "on_prem"])
def test_restore_is_above_enable_on_an_isolated_tier_too(app, password_hash, tier):
    org = add_org(app, password_hash, tier)
    wizard = sign_in(app, org["admin"])
    _, text, _ = new_key()
    wizard.enable_ok(text)
    assert wizard.confirm("lost", org["slug"]).status_code == 200
    assert section_order(wizard.page()) == ["restore-form", "enable-form"]


def test_restore_is_above_rotate_while_an_older_key_is_lost(app, admin, orgs):  # noqa: F811
    _, first, _ = new_key()
    admin.enable_ok(first)
    assert admin.confirm("lost", orgs["a"]["slug"]).status_code == 200
    _, second, _ = new_key()
    admin.enable_ok(second)
    assert section_order(admin.page()) == ["restore-form", "rotate-form"]


@pytest.mark.parametrize("tier", ["dedicated", "on_prem"])
def test_an_isolated_tier_after_a_loss_says_restore_the_key(app, password_hash, tier):
    org = add_org(app, password_hash, tier)
    wizard = sign_in(app, org["admin"])
    _, text, _ = new_key()
    wizard.enable_ok(text)
    assert wizard.confirm("lost", org["slug"]).status_code == 200
    state = by_testid(wizard.page(), "byok-state")
    assert "declared lost" in state and "Restore key" in state, state
    assert "until a key is enabled" not in state, state
