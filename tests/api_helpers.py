"""Shared set-up for data-API tests: a bearer-token client, tokens and error checks."""

from __future__ import annotations

import io
import uuid
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from portal.chat.service import create_token
from portal.db import get_session

API = "/api/v1"


class Api:
    """A bearer-token client of the data API."""

    def __init__(self, client: FlaskClient, token: str | None, scheme: str = "Bearer") -> None:
        """Remember the test client and the token sent with every request (if any)."""
        self.client = client
        self.token = token
        self.headers = {"Authorization": f"{scheme} {token}"} if token else {}

    def get(self, path: str, **query: Any):
        """GET an API path with a query string."""
        return self.client.get(API + path, query_string=query, headers=self.headers)

    def delete(self, path: str):
        """DELETE an API path."""
        return self.client.delete(API + path, headers=self.headers)

    def post_json(self, path: str, body: Any):
        """POST a JSON document."""
        return self.client.post(API + path, json=body, headers=self.headers)

    def post_raw(self, path: str, data: bytes | str, content_type: str = "application/json"):
        """POST a body exactly as given."""
        return self.client.post(
            API + path, data=data, content_type=content_type, headers=self.headers
        )

    def conversation(self, title: str = "t", metadata: dict | None = None) -> str:
        """Create a conversation and return its id."""
        response = self.post_json("/conversations", {"title": title, "metadata": metadata or {}})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def message(self, conv_id: str, body: str = "hello", author: str = "ada") -> str:
        """Add a message and return its id."""
        response = self.post_json(
            f"/conversations/{conv_id}/messages", {"body": body, "author": author}
        )
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def upload(self, conv_id: str, content: bytes, filename: str, content_type: str | None):
        """POST a file as multipart field ``file``."""
        part = (io.BytesIO(content), filename, content_type) if content_type else None
        part = part or (io.BytesIO(content), filename)
        return self.client.post(
            f"{API}/conversations/{conv_id}/attachments",
            data={"file": part},
            content_type="multipart/form-data",
            headers=self.headers,
        )

    def attachment(self, conv_id: str, content: bytes = b"file", filename: str = "f.bin") -> str:
        """Attach a file and return its id."""
        response = self.upload(conv_id, content, filename, "application/octet-stream")
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]


def make_token(app: Flask, company_id: uuid.UUID, name: str = "test") -> str:
    """Create an API token for an organisation directly through the service."""
    with app.app_context():
        db = get_session()
        token = create_token(db, company_id, name)
        db.commit()
    return token


def assert_error(response, status: int, code: str | None = None) -> dict:
    """Check an API error: the status, a JSON body with error and message, and the code."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and set(body) >= {"error", "message"}, body
    if code is not None:
        assert body["error"] == code, body
    return body
