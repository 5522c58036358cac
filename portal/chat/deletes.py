"""Erasing chat data: a conversation with what it holds, a message, an attachment.

No key is needed to erase. Each delete reports the rows it removed to the per-key counters
(portal/chat/counts.py) from ``DELETE ... RETURNING``, so they count what really went.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from portal.chat import counts, kinds
from portal.chat.models import Attachment, Conversation, Message


def delete_conversation(session: Session, company_id: uuid.UUID, conv_id: uuid.UUID) -> bool:
    """Delete a conversation of the organisation with its messages and attachments.

    Returns False when the organisation has no such conversation. A rotation batch that read
    one of these rows meanwhile finds nothing to compare-and-swap, and writes nothing back.
    """
    exists = select(Conversation.id).where(
        Conversation.id == conv_id, Conversation.company_id == company_id
    )
    if session.scalar(exists) is None:
        return False
    for model in (Attachment, Message):
        gone = session.execute(
            delete(model)
            .where(model.conversation_id == conv_id, model.company_id == company_id)
            .returning(model.key_id, model.created_at)
            .execution_options(synchronize_session=False)
        )
        counts.note_removed(session, kinds.of(model).name, company_id, gone.all())
    return _delete_row(session, Conversation, company_id, conv_id)


def delete_message(session: Session, company_id: uuid.UUID, msg_id: uuid.UUID) -> bool:
    """Delete a message of the organisation; False when it has no such message."""
    return _delete_row(session, Message, company_id, msg_id)


def delete_attachment(session: Session, company_id: uuid.UUID, att_id: uuid.UUID) -> bool:
    """Delete an attachment of the organisation; False when it has no such attachment."""
    return _delete_row(session, Attachment, company_id, att_id)


def _delete_row(session: Session, model: type, company_id: uuid.UUID, row_id: uuid.UUID) -> bool:
    """Delete one row by id, only within the organisation (no key is needed to erase)."""
    gone = session.execute(
        delete(model)
        .where(model.id == row_id, model.company_id == company_id)
        .returning(model.key_id, model.created_at)
        .execution_options(synchronize_session=False)
    ).all()
    counts.note_removed(session, kinds.of(model).name, company_id, gone)
    return len(gone) == 1
