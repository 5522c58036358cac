"""The data API's OpenAPI 3.1 document, kept beside the routes it describes."""

from __future__ import annotations

from typing import Any

from portal.chat.service import MAX_NESTING

ID = {"type": "string", "format": "uuid"}
DEFAULT_LIMITS = {"MAX_TITLE_CHARS": 1000, "MAX_METADATA_BYTES": 64 * 1024}


def _error(description: str) -> dict[str, Any]:
    """A JSON error response."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


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
UNREADABLE = {
    "type": "object",
    "required": ["status", "reason"],
    "properties": {
        "status": {"const": "unreadable"},
        "reason": {
            "enum": ["malformed", "unknown_key", "key_unavailable", "integrity", "too_deep"],
            "description": "too_deep: metadata stored before writes were bounded nests deeper "
            f"than {MAX_NESTING} levels",
        },
    },
}
TEXT_OR_UNREADABLE = {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Unreadable"}]}


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
        "503": _error("the organisation's key is unavailable"),
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
            "/conversations": {
                "post": {
                    "summary": "Create a conversation",
                    "operationId": "createConversation",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/NewConversation"}
                            }
                        },
                    },
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
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/NewMessage"}
                            }
                        },
                    },
                    "responses": {"201": _created("created"), **COMMON, **json_body},
                }
            },
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
                    "parameters": [
                        {"name": "msg_id", "in": "path", "required": True, "schema": ID}
                    ],
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
                    "parameters": [
                        {"name": "att_id", "in": "path", "required": True, "schema": ID}
                    ],
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
            "schemas": _schemas(limits),
        },
    }


def _schemas(limits: dict[str, int]) -> dict[str, Any]:
    """Request and response bodies."""
    summary_props = {
        "id": ID,
        "created_at": {"type": "string", "format": "date-time"},
        "title": {"type": "string"},
        "metadata": {"type": "object"},
        "status": {"const": "unreadable"},
        "reason": {"type": "string"},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
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
