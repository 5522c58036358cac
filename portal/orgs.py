"""Creating organisations."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.keys.service import create_platform_key
from portal.models import TIERS, Organization

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")


class OrgError(ValueError):
    """An organisation cannot be created as asked; the message says why."""


def slugify(name: str) -> str:
    """Turn a name into a slug: lowercase, runs of other characters become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def create_org(session: Session, name: str, tier: str, slug: str | None = None) -> Organization:
    """Add an organisation after checking its tier and slug."""
    name = name.strip()
    if not name:
        raise OrgError("the organisation needs a name")
    if tier not in TIERS:
        raise OrgError(f"tier must be one of {', '.join(TIERS)}")
    slug = slug or slugify(name)
    if not SLUG_RE.match(slug):
        raise OrgError("the slug may hold lowercase letters, digits and dashes only")
    if session.scalar(select(Organization.id).where(Organization.slug == slug)):
        raise OrgError(f"an organisation with slug {slug!r} exists already")
    org = Organization(name=name, slug=slug, tier=tier)
    session.add(org)
    session.flush()
    # Data at rest is encrypted from the first write, whatever the tier.
    create_platform_key(session, org)
    return org


def get_org(session: Session, slug: str) -> Organization:
    """Return the organisation with ``slug`` or raise OrgError."""
    org = session.scalar(select(Organization).where(Organization.slug == slug))
    if org is None:
        raise OrgError(f"no organisation with slug {slug!r}")
    return org
