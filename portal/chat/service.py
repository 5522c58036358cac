"""Writing and reading chat data through the organisation's keyring."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from portal import crypto
from portal.chat import counts, kinds
from portal.chat.deletes import (  # noqa: F401 - part of the service's interface
    delete_attachment,
    delete_conversation,
    delete_message,
)
from portal.chat.keyrings import keyring_source
from portal.chat.metadata import encode_metadata
from portal.chat.models import ApiToken, Attachment, Conversation, Message
from portal.db import new_id, utcnow

# Tries of an edit against rows a rotation keeps moving (one batch moves a row once).
EDIT_ATTEMPTS = 5
TOKEN_PREFIX = "byok_"  # noqa: S105 - a public prefix, not a secret


def _writable_keyring(session: Session, company_id: uuid.UUID) -> crypto.Keyring:
    """Return the keyring new data is encrypted with, after checking the data may be stored.

    The app's keyring source raises ByokRequired where the deployment or tier requires the
    organisation's own key and none is enabled yet, and KeyUnavailable when the encrypting
    key cannot be unsealed.
    """
    return keyring_source().writable(session, company_id)


def create_conversation(
    session: Session, company_id: uuid.UUID, title: str, metadata: dict[str, Any]
) -> Conversation:
    """Store a new conversation with its title and metadata encrypted."""
    ring = _writable_keyring(session, company_id)
    conv = Conversation(id=new_id(), company_id=company_id)
    kinds.encrypt_column(ring, conv, "title", title.encode())
    kinds.encrypt_column(ring, conv, "metadata", encode_metadata(metadata))
    session.add(conv)
    session.flush()
    return conv


def add_message(session: Session, conv: Conversation, author: str, body: str) -> Message:
    """Store a message of a conversation with its body encrypted."""
    ring = _writable_keyring(session, conv.company_id)
    msg = Message(id=new_id(), company_id=conv.company_id, conversation_id=conv.id, author=author)
    kinds.encrypt_column(ring, msg, "body", body.encode())
    session.add(msg)
    session.flush()
    return msg


def add_messages(
    session: Session, conv: Conversation, items: list[tuple[str, str]]
) -> list[uuid.UUID]:
    """Store (author, body) messages of a conversation in the order given, with one keyring.

    One multi-row INSERT without the ORM's unit of work (the caller's commit makes it one
    transaction; the per-key counters see it, portal/chat/counts.py). The rows share one
    moment and take rising ids, so reads, ordered by (created_at, id), return them in order.
    """
    ring = _writable_keyring(session, conv.company_id)
    key_id, now, rows = ring.encrypting_key_id.hex(), utcnow(), []
    for author, body in items:
        msg_id = new_id()
        aad = kinds.associated_data(conv.company_id, "messages", "body", msg_id)
        rows.append(
            {
                "id": msg_id,
                "company_id": conv.company_id,
                "conversation_id": conv.id,
                "key_id": key_id,
                "author": author,
                "body_ct": bytes(ring.encrypt(body.encode(), aad)),
                "created_at": now,
            }
        )
    session.execute(insert(Message), rows)
    return [row["id"] for row in rows]


def edit_message(session: Session, msg: Message, body: str) -> Message:
    """Replace a message's body, encrypted under the organisation's current key.

    A compare-and-swap on the key the row is under, as a rotation batch does: if a batch
    moved the row since it was read, the edit reads it again, so the key it leaves is
    counted as the row really held it (portal/chat/counts.py).
    """
    ring = _writable_keyring(session, msg.company_id)
    new_key, aad = (
        ring.encrypting_key_id.hex(),
        kinds.associated_data(msg.company_id, "messages", "body", msg.id),
    )
    for _ in range(EDIT_ATTEMPTS):
        current = session.scalar(select(Message.key_id).where(Message.id == msg.id))
        if current is None:
            break
        blob = bytes(ring.encrypt(body.encode(), aad))
        swapped = session.execute(
            update(Message)
            .where(Message.id == msg.id, Message.key_id == current)
            .values(body_ct=blob, key_id=new_key)
            .execution_options(synchronize_session=False)
        ).rowcount
        if swapped:
            if current != new_key:
                counts.note_moved(
                    session, "messages", msg.company_id, current, new_key, msg.created_at
                )
            set_committed_value(msg, "body_ct", blob)
            set_committed_value(msg, "key_id", new_key)
            return msg
    raise StaleDataError(f"message {msg.id} was deleted or kept changing meanwhile")


def add_attachment(
    session: Session, conv: Conversation, filename: str, content_type: str, content: bytes
) -> Attachment:
    """Store a file of a conversation with its name and content encrypted."""
    ring = _writable_keyring(session, conv.company_id)
    att = Attachment(
        id=new_id(),
        company_id=conv.company_id,
        conversation_id=conv.id,
        content_type=content_type,
        size=len(content),
    )
    kinds.encrypt_column(ring, att, "filename", filename.encode())
    kinds.encrypt_column(ring, att, "content", content)
    session.add(att)
    session.flush()
    return att


@dataclass
class Reader:
    """Decrypts an organisation's values, collecting failures to audit once per request."""

    session: Session
    company_id: uuid.UUID
    failures: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def column(self, row: Any, ad_name: str) -> bytes:
        """Decrypt one encrypted column of a row of a registered kind (see chat.kinds)."""
        try:
            return kinds.open_column(self._ring(), row, ad_name)
        except crypto.DecryptionError as exc:
            self._note(exc, kinds.of(row).table, row.id)
            raise

    def text(self, row: Any, ad_name: str) -> str:
        """Decrypt one encrypted text column of a row."""
        return self.column(row, ad_name).decode()

    def _ring(self) -> crypto.Keyring:
        """The organisation's keyring for reading."""
        return keyring_source().readable(self.session, self.company_id)

    def _note(self, exc: crypto.DecryptionError, table: str, row_id: uuid.UUID) -> None:
        """Remember a failure, grouped by the key it was under and its table."""
        key = exc.key_id.hex() if exc.key_id else "unknown"
        self.failures.setdefault((key, table), []).append(f"{row_id}:{exc.reason}")

    def record_failures(self, actor: Any) -> None:
        """Audit the request's failures: per key and minute, aggregated beyond the first."""
        from portal.audit import aggregate
        from portal.audit.actions import Action

        for (key, table), items in self.failures.items():
            aggregate.record(
                self.session,
                self.company_id,
                key,
                table,
                items,
                actor,
                action=Action.DECRYPT_FAILED,
            )
        self.failures.clear()


def unreadable(exc: crypto.DecryptionError) -> dict[str, str]:
    """Describe a value that could not be decrypted, for API responses.

    ``unavailable`` when the customer's key service refused or did not answer (the item is
    intact and reads again once access is back), ``unreadable`` otherwise.
    """
    temporary = exc.reason in crypto.TEMPORARY_FAILURES
    return {"status": "unavailable" if temporary else "unreadable", "reason": exc.reason}


def get_conversation(
    session: Session, company_id: uuid.UUID, conv_id: uuid.UUID
) -> Conversation | None:
    """Return a conversation of the organisation, or None (also for other organisations')."""
    return session.scalar(
        select(Conversation).where(
            Conversation.id == conv_id, Conversation.company_id == company_id
        )
    )


def list_messages(
    session: Session, conv: Conversation, limit: int, after: Message | None
) -> list[Message]:
    """Return a page of a conversation's messages, oldest first, after a cursor message."""
    query = select(Message).where(
        Message.conversation_id == conv.id, Message.company_id == conv.company_id
    )
    if after is not None:
        query = query.where(
            tuple_(Message.created_at, Message.id) > tuple_(after.created_at, after.id)
        )
    return list(session.scalars(query.order_by(Message.created_at, Message.id).limit(limit)))


def list_conversations(
    session: Session, company_id: uuid.UUID, limit: int, after: Conversation | None
) -> list[Conversation]:
    """Return a page of the organisation's conversations, oldest first."""
    query = select(Conversation).where(Conversation.company_id == company_id)
    if after is not None:
        query = query.where(
            tuple_(Conversation.created_at, Conversation.id) > tuple_(after.created_at, after.id)
        )
    return list(
        session.scalars(query.order_by(Conversation.created_at, Conversation.id).limit(limit))
    )


def hash_token(token: str) -> str:
    """Hash a bearer token for storage and lookup (tokens are random, so SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, company_id: uuid.UUID, name: str) -> str:
    """Create an API token and return it; only its hash is kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(company_id=company_id, name=name, token_hash=hash_token(token)))
    session.flush()
    return token


def find_token(session: Session, token: str) -> ApiToken | None:
    """Return the live token row matching a presented bearer token."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    return row if row is not None and row.revoked_at is None else None


def iso(moment: datetime) -> str:
    """Format a stored time as ISO 8601 UTC."""
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
