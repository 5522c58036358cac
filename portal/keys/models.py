"""The ``keys`` table: every key an organisation has had, stored only sealed."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow

KEY_STATES = ("active", "decrypt_only", "retired", "unavailable", "lost")
# "external": a data key generated here and wrapped by the customer's key service.
KEY_ORIGINS = ("platform", "generated", "imported", "external")


class OrgKey(Base):
    """One key of one organisation: its public id, state and sealed copy (never the key)."""

    __tablename__ = "keys"
    __table_args__ = (
        UniqueConstraint("company_id", "key_id", name="uq_keys_company_key_id"),
        CheckConstraint(f"state IN {KEY_STATES}", name="ck_keys_state"),
        CheckConstraint(f"origin IN {KEY_ORIGINS}", name="ck_keys_origin"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    # Hex of crypto.key_id(key): the same value as the key_id column of every data row.
    key_id: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(20))
    origin: Mapped[str] = mapped_column(String(20))
    # Sealed under the custody backend; NULL once retired or revoked.
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The registered name of the backend that sealed it (portal/keys/custody/), which unseals it.
    custody: Mapped[str | None] = mapped_column(String(100))
    # External keys only: the key in the customer's service that wraps this data key (a
    # Transit key name, KMS key ARN or PKCS#11 label; never a secret), and for AWS an
    # optional role in the customer's account, assumed with ExternalId = company_id.
    key_ref: Mapped[str | None] = mapped_column(String(2048))
    role_arn: Mapped[str | None] = mapped_column(String(2048))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    state_changed_by: Mapped[str | None] = mapped_column(String(320))

    @property
    def external(self) -> bool:
        """Whether the customer's key service (not the portal) holds the key-encryption key."""
        return self.key_ref is not None

    @property
    def fingerprint(self) -> str:
        """Return the key's fingerprint as shown to people."""
        from portal.crypto import fingerprint

        return fingerprint(bytes.fromhex(self.key_id))
