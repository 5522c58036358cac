"""Organisations and users: the tenancy and identity every other area builds on."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import Base, UTCDateTime, new_id, utcnow

TIERS = ("community", "org_community", "dedicated", "on_prem")
ROLES = ("admin", "auditor", "support", "member")
TIER_LABELS = {
    "community": "Community (personal)",
    "org_community": "Organization Community",
    "dedicated": "Dedicated",
    "on_prem": "On-Premise",
}


class Organization(Base):
    """A tenant: every row of tenant data carries its id as ``company_id``."""

    __tablename__ = "organizations"
    __table_args__ = (CheckConstraint(f"tier IN {TIERS}", name="ck_organizations_tier"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    tier: Mapped[str] = mapped_column(String(20))
    # How often the organisation means to rotate its BYOK key (the status panel warns after).
    rotation_period_days: Mapped[int] = mapped_column(Integer, default=90, server_default="90")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    users: Mapped[list[User]] = relationship(back_populates="organization")

    @property
    def tier_label(self) -> str:
        """Return the tier as the product names it."""
        return TIER_LABELS[self.tier]


class User(Base):
    """A person who signs in; support users are platform staff with no organisation."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES}", name="ck_users_role"),
        CheckConstraint(
            "(role = 'support') OR (company_id IS NOT NULL)", name="ck_users_company_required"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    company_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    # Part of the login cookie; replacing it signs out every copy of an old cookie.
    session_token: Mapped[str] = mapped_column(
        String(64), default=lambda: secrets.token_urlsafe(32)
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    organization: Mapped[Organization | None] = relationship(back_populates="users")

    # flask-login protocol
    is_active = True
    is_anonymous = False
    is_authenticated = True

    def get_id(self) -> str:
        """Return the login cookie's identity: user id and current session token."""
        return f"{self.id}:{self.session_token}"

    def rotate_session_token(self) -> None:
        """Invalidate every session that was opened with the previous token."""
        self.session_token = secrets.token_urlsafe(32)
