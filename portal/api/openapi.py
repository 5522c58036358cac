"""The data API's OpenAPI 3.1 document, kept beside the routes it describes."""

from __future__ import annotations

from typing import Any

ID = {"type": "string", "format": "uuid"}


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
        "reason": {"enum": ["malformed", "unknown_key", "key_unavailable", "integrity"]},
    },
}
TEXT_OR_UNREADABLE = {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Unreadable"}]}


def openapi_document(server: str = "/api/v1") -> dict[str, Any]:
    """Return the OpenAPI document of the API served at ``server`` (a path)."""
    writes = {
        "409": _error("BYOK is required here and the organisation has not enabled its key"),
        "503": _error("the organisation's key is unavailable"),
    }
    json_body = {
        "400": _error("bad JSON or a missing field"),
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
                }
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
                }
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
                }
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
            "schemas": _schemas(),
        },
    }


def _schemas() -> dict[str, Any]:
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
                "title": {"type": "string", "minLength": 1},
                "metadata": {"type": "object"},
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
