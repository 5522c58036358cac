"""The data API's OpenAPI 3.1 document, kept beside the routes it describes."""

from __future__ import annotations

from typing import Any

from portal.api.openapi_schemas import ID, UNREADABLE, schemas
from portal.chat.metadata import MAX_NESTING

DEFAULT_LIMITS = {
    "MAX_TITLE_CHARS": 1000,
    "MAX_METADATA_BYTES": 64 * 1024,
    "MAX_BATCH_MESSAGES": 500,
}


def _json(schema: str) -> dict[str, Any]:
    """A JSON body of a component schema."""
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _error(description: str) -> dict[str, Any]:
    """A JSON error response."""
    return {"description": description, "content": _json("Error")}


def _json_request(schema: str) -> dict[str, Any]:
    """A required JSON request body of a component schema."""
    return {"required": True, "content": _json(schema)}


def _created(description: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 201 response carrying the new object's id."""
    props: dict[str, Any] = {"id": ID, **(extra or {})}
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": list(props), "properties": props}
            }
        },
    }


def _delete(summary: str, operation_id: str, param: str) -> dict[str, Any]:
    """A DELETE of one object by id: 204, or 404 if the organisation has no such object."""
    return {
        "summary": summary,
        "description": "Any token of the organisation may delete (tokens have no scopes); "
        "no key is needed, so data under a lost key can still be erased.",
        "operationId": operation_id,
        "parameters": [{"name": param, "in": "path", "required": True, "schema": ID}],
        "responses": {"204": {"description": "deleted"}, **COMMON},
    }


COMMON = {
    "401": _error("missing or invalid bearer token"),
    "404": _error("no such object in the token's organisation"),
}
PATH_ID = {"name": "conv_id", "in": "path", "required": True, "schema": ID}
LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
}
AFTER = {"name": "after", "in": "query", "required": False, "schema": ID}


def openapi_document(
    server: str = "/api/v1", limits: dict[str, int] | None = None
) -> dict[str, Any]:
    """Return the OpenAPI document of the API served at ``server`` (a path), with its limits."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    writes = {
        "409": _error(
            "BYOK is required here and the organisation has no usable key of its own: none "
            "enabled yet, or its key was declared lost or revoked (restore it)"
        ),
        "403": _error(
            "key_access_revoked: the organisation's key service refused access to its key; "
            "nothing was stored"
        ),
        "503": _error(
            "the organisation's key is unavailable, or key_service_unreachable: its key "
            "service did not answer (see Retry-After); nothing was stored"
        ),
    }
    json_body = {
        "400": _error(
            f"bad JSON, a missing field, a value nested over {MAX_NESTING} levels (too_deep), "
            "or a title or metadata over its limit"
        ),
        "415": _error("not application/json"),
        **writes,
    }
    multipart_body = {
        "400": _error("no 'file' field, or a content type longer than 200 characters"),
        "415": _error("not multipart/form-data"),
        **writes,
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "byok-portal data API", "version": "1"},
        "servers": [{"url": server}],
        "security": [{"bearer": []}],
        "paths": {
            **_conversation_paths(json_body),
            **_item_paths(json_body, multipart_body),
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "getOpenApiDocument",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the OpenAPI document of the data API",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(limits),
        },
    }


def _conversation_paths(json_body: dict[str, Any]) -> dict[str, Any]:
    """The paths of conversations and their messages."""
    return {
        "/conversations": {
            "post": {
                "summary": "Create a conversation",
                "operationId": "createConversation",
                "requestBody": _json_request("NewConversation"),
                "responses": {"201": _created("created"), **COMMON, **json_body},
            },
            "get": {
                "summary": "List conversations, oldest first",
                "operationId": "listConversations",
                "parameters": [LIMIT, AFTER],
                "responses": {
                    "200": {
                        "description": "a page of conversations",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ConversationPage"}
                            }
                        },
                    },
                    "400": _error("bad limit or cursor"),
                    **COMMON,
                },
            },
        },
        "/conversations/{conv_id}": {
            "get": {
                "summary": "A conversation with a page of messages and its attachments",
                "operationId": "getConversation",
                "parameters": [PATH_ID, LIMIT, AFTER],
                "responses": {
                    "200": {
                        "description": "the conversation",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Conversation"}
                            }
                        },
                    },
                    "400": _error("bad limit or cursor"),
                    **COMMON,
                },
            },
            "delete": _delete(
                "Delete the conversation with its messages and attachments",
                "deleteConversation",
                "conv_id",
            ),
        },
        "/conversations/{conv_id}/messages": {
            "post": {
                "summary": "Add a message",
                "operationId": "addMessage",
                "parameters": [PATH_ID],
                "requestBody": _json_request("NewMessage"),
                "responses": {"201": _created("created"), **COMMON, **json_body},
            }
        },
        "/conversations/{conv_id}/messages:batch": {
            "post": {
                "summary": "Add many messages in one transaction, all or none",
                "description": "Each message is checked as by addMessage. If any is invalid, "
                "nothing is stored and the 400 (bad_batch) lists each invalid one in 'items'.",
                "operationId": "addMessages",
                "parameters": [PATH_ID],
                "requestBody": _json_request("NewMessageBatch"),
                "responses": {
                    "201": {
                        "description": "stored, ids in the order given",
                        "content": _json("MessageIds"),
                    },
                    **COMMON,
                    **json_body,
                    "400": _error(
                        "bad_batch (an entry in 'items' per invalid message), no 'messages' "
                        "list (missing_field), none or too many (bad_batch_size), bad JSON"
                    ),
                    "413": _error("a body over the request size limit (too_large)"),
                },
            }
        },
    }


def _item_paths(json_body: dict[str, Any], multipart_body: dict[str, Any]) -> dict[str, Any]:
    """The paths of attachments and of single messages."""
    return {
        "/conversations/{conv_id}/attachments": {
            "post": {
                "summary": "Attach a file",
                "operationId": "addAttachment",
                "parameters": [PATH_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {"file": {"type": "string", "format": "binary"}},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _created("stored", {"size": {"type": "integer"}}),
                    "413": _error("larger than MAX_ATTACHMENT_BYTES"),
                    **COMMON,
                    **multipart_body,
                },
            }
        },
        "/messages/{msg_id}": {
            "patch": {
                "summary": "Edit a message's body",
                "operationId": "editMessage",
                "parameters": [{"name": "msg_id", "in": "path", "required": True, "schema": ID}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["body"],
                                "properties": {"body": {"type": "string", "minLength": 1}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _created("edited"),
                    **COMMON,
                    **json_body,
                },
            },
            "delete": _delete(
                "Delete the message",
                "deleteMessage",
                "msg_id",
            ),
        },
        "/attachments/{att_id}": {
            "get": {
                "summary": "An attachment's bytes",
                "operationId": "getAttachment",
                "parameters": [{"name": "att_id", "in": "path", "required": True, "schema": ID}],
                "responses": {
                    "200": {
                        "description": "the file, with its content type",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "409": {
                        "description": "the attachment cannot be decrypted",
                        "content": {"application/json": {"schema": UNREADABLE}},
                    },
                    **COMMON,
                },
            },
            "delete": _delete(
                "Delete the attachment",
                "deleteAttachment",
                "att_id",
            ),
        },
    }
