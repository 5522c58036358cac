"""The one registry of encrypted kinds of data: everything that stores, reads, counts or
re-encrypts items iterates it, so a kind declared here is covered everywhere.

A kind is a table whose rows carry ``id``, ``company_id``, ``key_id``, ``created_at`` and
one or more encrypted columns (tests/test_kinds_registry.py checks every kind and that every
table with a ``key_id`` column is one). Each encrypted column has a model attribute
(``body_ct``) and the name bound into its associated data (``body``, see docs/format.md),
which never changes once data exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from portal import crypto
from portal.chat.models import Attachment, Conversation, Message


@dataclass(frozen=True)
class Column:
    """One encrypted column: the attribute holding ciphertext and its associated-data name."""

    attr: str
    ad_name: str


@dataclass(frozen=True)
class Kind:
    """One kind of encrypted item: its name, model, encrypted columns and label for people."""

    name: str
    model: Any  # a mapped class with id, company_id and key_id
    columns: tuple[Column, ...]
    label: str
    # A cheap size column, so that big items are batched by bytes without reading them.
    size_column: str | None = None

    @property
    def table(self) -> str:
        """The table's name, as bound into the associated data of its values."""
        return self.model.__tablename__

    @property
    def ct_columns(self) -> tuple[str, ...]:
        """The names of the columns holding ciphertext."""
        return tuple(c.attr for c in self.columns)

    @property
    def ad_names(self) -> tuple[str, ...]:
        """The associated-data names of the encrypted columns, in column order."""
        return tuple(c.ad_name for c in self.columns)

    def column(self, ad_name: str) -> Column:
        """Return the encrypted column with this associated-data name."""
        for col in self.columns:
            if col.ad_name == ad_name:
                return col
        raise KeyError(f"{self.name} has no encrypted column {ad_name!r}")


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind to the registry (once per name) and return it."""
    if kind.name in KINDS:
        raise ValueError(f"the kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


@contextmanager
def registered(kind: Kind) -> Iterator[Kind]:
    """Register a kind for the duration of a block (for tests and tools)."""
    register(kind)
    try:
        yield kind
    finally:
        KINDS.pop(kind.name, None)


def all_kinds() -> tuple[Kind, ...]:
    """Every registered kind, in registration order."""
    return tuple(KINDS.values())


def get(name: str) -> Kind:
    """Return the kind of this name, or raise KeyError."""
    return KINDS[name]


def of(row: Any) -> Kind:
    """Return the kind of a model instance (or model class)."""
    model = row if isinstance(row, type) else type(row)
    for kind in KINDS.values():
        if kind.model is model:
            return kind
    raise KeyError(f"{model.__name__} is not a registered encrypted kind")


def associated_data(company_id: uuid.UUID, table: str, ad_name: str, row_id: uuid.UUID) -> bytes:
    """Associated data binding a value to its organisation, table, column and row."""
    return crypto.associated_data(str(company_id), table, ad_name, str(row_id))


def encrypt_column(ring: crypto.Keyring, row: Any, ad_name: str, data: bytes) -> None:
    """Encrypt data into one column of row under the ring's key, and record that key."""
    kind = of(row)
    aad = associated_data(row.company_id, kind.table, ad_name, row.id)
    setattr(row, kind.column(ad_name).attr, bytes(ring.encrypt(data, aad)))
    row.key_id = ring.encrypting_key_id.hex()


def open_column(ring: crypto.Keyring, row: Any, ad_name: str) -> bytes:
    """Decrypt one column of row; raises crypto.DecryptionError (with a reason) if it can't."""
    kind = of(row)
    aad = associated_data(row.company_id, kind.table, ad_name, row.id)
    return ring.decrypt(getattr(row, kind.column(ad_name).attr), aad)


MESSAGES = register(Kind("messages", Message, (Column("body_ct", "body"),), "Messages"))
ATTACHMENTS = register(
    Kind(
        "attachments",
        Attachment,
        (Column("filename_ct", "filename"), Column("content_ct", "content")),
        "Attachments",
        size_column="size",
    )
)
METADATA = register(
    Kind(
        "metadata",
        Conversation,
        (Column("title_ct", "title"), Column("metadata_ct", "metadata")),
        "Conversation metadata",
    )
)
