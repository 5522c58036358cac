"""Refused key operations: the error a refusal raises and how it becomes an audit event."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from portal.audit.actions import Action
from portal.events import emit
from portal.models import Organization


class KeyOperationError(ValueError):
    """A key operation was refused; ``field`` names the form field the message belongs to.

    ``code`` is the reason recorded in the audit event, with ``details`` (non-secret values
    such as a fingerprint or a key state, never key material).
    """

    def __init__(
        self,
        message: str,
        field: str | None = None,
        code: str = "refused",
        details: dict[str, str] | None = None,
    ) -> None:
        """Keep the message, the form field it belongs to and the audited reason."""
        super().__init__(message)
        self.message, self.field, self.code = message, field, code
        self.details = details or {}
        self.audited = False


def audit_refusal(
    session: Session,
    org: Organization | None,
    actor: Any,
    action: Action,
    exc: KeyOperationError,
    **extra: str,
) -> None:
    """Record a refused key operation once, as a failure of its action with the reason code."""
    if exc.audited or org is None:
        return
    exc.audited = True
    emit(
        session,
        action,
        outcome="failure",
        actor=actor,
        company_id=org.id,
        details={"reason": exc.code, **exc.details, **extra},
    )


def audits_refusals(action: Action) -> Callable:
    """Make every refusal of a key operation ``(session, org, actor, ...)`` an audit event."""

    def decorate(operation: Callable) -> Callable:
        """Wrap one key operation so that its refusals are audited under ``action``."""

        @functools.wraps(operation)
        def run(session: Session, org: Organization, actor: Any, *args: Any, **kwargs: Any):
            """Run the operation; audit and re-raise a refusal."""
            try:
                return operation(session, org, actor, *args, **kwargs)
            except KeyOperationError as exc:
                audit_refusal(session, org, actor, action, exc)
                raise

        return run

    return decorate
