"""The data API's OpenAPI schemas: request and response bodies, by reference in the paths."""

from __future__ import annotations

from typing import Any

from portal.chat.metadata import MAX_NESTING
from portal.crypto import DECRYPTION_FAILURES

ID = {"type": "string", "format": "uuid"}
UNREADABLE = {
    "type": "object",
    "required": ["status", "reason"],
    "properties": {
        "status": {
            "enum": ["unreadable", "unavailable"],
            "description": "unavailable: the organisation's key service refused or did not "
            "answer; the item is intact and reads again once access is back",
        },
        "reason": {
            "enum": [*DECRYPTION_FAILURES, "too_deep"],
            "description": "too_deep: metadata stored before writes were bounded nests deeper "
            f"than {MAX_NESTING} levels",
        },
    },
}
TEXT_OR_UNREADABLE = {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Unreadable"}]}


def schemas(limits: dict[str, int]) -> dict[str, Any]:
    """The request and response bodies, with the configured limits."""
    summary_props = {
        "id": ID,
        "created_at": {"type": "string", "format": "date-time"},
        "title": {"type": "string"},
        "metadata": {"type": "object"},
        "status": {"enum": ["unreadable", "unavailable"]},
        "reason": {"type": "string"},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "items": {
                    "description": "bad_batch only: the error of each invalid message",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "code", "message"],
                        "properties": {
                            "index": {"type": "integer", "minimum": 0},
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Unreadable": UNREADABLE,
        "NewConversation": {
            "type": "object",
            "required": ["title"],
            "properties": {
                "title": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": limits["MAX_TITLE_CHARS"],
                },
                "metadata": {
                    "type": "object",
                    "description": f"at most {limits['MAX_METADATA_BYTES']} bytes as compact "
                    f"UTF-8 JSON, nesting at most {MAX_NESTING} levels ({{}} is one level)",
                },
            },
        },
        "NewMessage": {
            "type": "object",
            "required": ["body", "author"],
            "properties": {
                "body": {"type": "string", "minLength": 1},
                "author": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        },
        "NewMessageBatch": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits["MAX_BATCH_MESSAGES"],
                    "items": {"$ref": "#/components/schemas/NewMessage"},
                }
            },
        },
        "MessageIds": {
            "type": "object",
            "required": ["ids"],
            "properties": {"ids": {"type": "array", "items": ID}},
        },
        "ConversationSummary": {"type": "object", "required": ["id"], "properties": summary_props},
        "ConversationPage": {
            "type": "object",
            "required": ["conversations", "next_after"],
            "properties": {
                "conversations": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/ConversationSummary"},
                },
                "next_after": {"type": ["string", "null"]},
            },
        },
        "Conversation": {
            "type": "object",
            "required": ["id", "messages", "attachments", "next_after"],
            "properties": {
                **summary_props,
                "messages": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "author", "body", "created_at"],
                        "properties": {
                            "id": ID,
                            "author": {"type": "string"},
                            "created_at": {"type": "string", "format": "date-time"},
                            "body": TEXT_OR_UNREADABLE,
                        },
                    },
                },
                "attachments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "filename", "content_type", "size"],
                        "properties": {
                            "id": ID,
                            "filename": TEXT_OR_UNREADABLE,
                            "content_type": {"type": "string"},
                            "size": {"type": "integer"},
                            "created_at": {"type": "string", "format": "date-time"},
                        },
                    },
                },
                "next_after": {"type": ["string", "null"]},
            },
        },
    }
