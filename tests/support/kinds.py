"""A test-only kind of encrypted data on a test-only table, registered for one test.

Its own metadata keeps the table out of the portal's: the ``notes_kind`` fixture creates it
in the test database and registers the kind, and removes both afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
from flask import Flask
from sqlalchemy import BigInteger, LargeBinary, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from portal.chat import kinds
from portal.db import UTCDateTime, new_id, utcnow


class NotesBase(DeclarativeBase):
    """Its own metadata: the test table is none of the portal's tables."""


class Note(NotesBase):
    """A test-only encrypted kind: two ciphertext columns and a size for batching by bytes."""

    __tablename__ = "test_kind_notes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    company_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    key_id: Mapped[str] = mapped_column(String(16))
    text_ct: Mapped[bytes] = mapped_column(LargeBinary)
    tag_ct: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


NOTES_KIND = kinds.Kind(
    "notes",
    Note,
    (kinds.Column("text_ct", "text"), kinds.Column("tag_ct", "tag")),
    "Test notes",
    size_column="size",
)


@pytest.fixture
def notes_kind(app: Flask) -> Iterator[kinds.Kind]:
    """The notes table in the test database and its kind in the registry, for one test."""
    engine = app.extensions["db_engine"]
    NotesBase.metadata.create_all(engine)
    try:
        with kinds.registered(NOTES_KIND) as kind:
            yield kind
    finally:
        NotesBase.metadata.drop_all(engine)
