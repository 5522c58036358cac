"""The data API as a client sees it: one bearer-token JSON client, tokens and error checks."""

from __future__ import annotations

import io
import uuid
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from portal.audit.models import AuditEvent
from portal.chat.service import create_token
from portal.db import Base, get_session
from portal.keys.models import OrgKey
from portal.keys.service import unseal

API = "/api/v1"


class Api:
    """A bearer-token client of the data API."""

    def __init__(self, client: FlaskClient, token: str | None, scheme: str = "Bearer") -> None:
        """Remember the test client and the token sent with every request (if any)."""
        self.client = client
        self.token = token
        self.headers = {"Authorization": f"{scheme} {token}"} if token else {}

    @classmethod
    def for_org(cls, app: Flask, company_id: uuid.UUID, name: str = "test") -> Api:
        """A client of its own holding a fresh token of the organisation."""
        return cls(app.test_client(), make_token(app, company_id, name))

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

    def create_conversation(self, title: str = "t", metadata: dict | None = None):
        """POST a conversation and return the response."""
        return self.post_json("/conversations", {"title": title, "metadata": metadata or {}})

    def conversation(self, title: str = "t", metadata: dict | None = None) -> str:
        """Create a conversation and return its id."""
        response = self.create_conversation(title, metadata)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def post_message(self, conv_id: str, body: str = "hello", author: str = "ada"):
        """POST a message and return the response."""
        return self.post_json(
            f"/conversations/{conv_id}/messages", {"body": body, "author": author}
        )

    def message(self, conv_id: str, body: str = "hello", author: str = "ada") -> str:
        """Add a message and return its id."""
        response = self.post_message(conv_id, body, author)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def read(self, conv_id: str) -> dict:
        """GET a conversation with its messages."""
        response = self.get(f"/conversations/{conv_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def bodies(self, conv_id: str) -> list[Any]:
        """Return the bodies of a conversation's messages (text, or an unreadable status)."""
        return [m["body"] for m in self.read(conv_id)["messages"]]

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


def rows(app: Flask, table: str, **where: Any) -> list[Any]:
    """Read the raw rows of a table with SQL (ciphertext columns as stored)."""
    tbl = Base.metadata.tables[table]
    query = select(tbl)
    for column, value in where.items():
        query = query.where(tbl.c[column] == value)
    with app.extensions["db_engine"].connect() as conn:
        return list(conn.execute(query))


def platform_key(app: Flask, company_id: uuid.UUID) -> tuple[str, bytes]:
    """Return the organisation's active platform key: (key id hex, raw key)."""
    with app.app_context():
        db = get_session()
        row = db.scalar(
            select(OrgKey).where(
                OrgKey.company_id == company_id,
                OrgKey.state == "active",
                OrgKey.origin == "platform",
            )
        )
        assert row is not None
        key = unseal(row)
        assert key is not None
        return row.key_id, key


def decrypt_failed_events(app: Flask, company_id: uuid.UUID) -> list[AuditEvent]:
    """Return the organisation's ``encryption_key.decrypt_failed`` audit events."""
    with app.app_context():
        return list(
            get_session().scalars(
                select(AuditEvent).where(
                    AuditEvent.company_id == company_id,
                    AuditEvent.action == "encryption_key.decrypt_failed",
                )
            )
        )


def copy_column(app: Flask, model: type, column: str, source: str, targets: list[str]) -> None:
    """Copy one row's stored ciphertext into other rows, as an attacker with SQL access could."""
    col = getattr(model, column)
    source_id = uuid.UUID(source)
    target_ids = [uuid.UUID(t) for t in targets]
    with app.extensions["db_engine"].begin() as conn:
        blob = conn.execute(select(col).where(model.id == source_id)).scalar_one()
        conn.execute(update(model).where(model.id.in_(target_ids)).values({column: blob}))
