"""Encrypted chat data. Every row has ``company_id`` and the ``key_id`` that encrypted it."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, SmallInteger, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import Base, UTCDateTime, new_id, utcnow


class Conversation(Base):
    """A conversation; its title and metadata document are encrypted.

    Each data table is indexed on (company_id, id), the order a rotation walks it in, and
    key_id is in no index: a row a rotation rewrites can be updated in place (a HOT update
    on PostgreSQL, with the fillfactor migration 0008 sets). Counts per key come from
    key_item_counts (portal/chat/counts.py), not from the data.
    """

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_company_created", "company_id", "created_at", "id"),
        Index("ix_conversations_company_id_id", "company_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    key_id: Mapped[str] = mapped_column(String(16))
    title_ct: Mapped[bytes] = mapped_column(LargeBinary)
    metadata_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    """A message of a conversation; its body is encrypted."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_order", "conversation_id", "created_at", "id"),
        Index("ix_messages_company_id_id", "company_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    key_id: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(200))
    body_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Attachment(Base):
    """A file attached to a conversation; its name and content are encrypted."""

    __tablename__ = "attachments"
    __table_args__ = (Index("ix_attachments_company_id_id", "company_id", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    key_id: Mapped[str] = mapped_column(String(16))
    filename_ct: Mapped[bytes] = mapped_column(LargeBinary)
    content_ct: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    """A bearer token of one organisation for the data API; only its hash is stored."""

    __tablename__ = "api_tokens"

    actor_type = "api_token"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class KeyItemCount(Base):
    """How many items of one kind an organisation holds under one key (portal/chat/counts.py).

    Kept in the transaction of every write, delete and rotation batch, in ``SHARDS`` rows per
    key and kind that are summed on reading, so concurrent writers rarely share a row.
    ``early``: those written under a platform key before the organisation's first own key.
    """

    __tablename__ = "key_item_counts"

    company_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    early: Mapped[int] = mapped_column(BigInteger, default=0)
