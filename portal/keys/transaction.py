"""How a key operation's transaction ends: the one place refusals keep their audit events."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from portal.keys.errors import KeyOperationError
from portal.keys.service import KeyUnavailable


@contextmanager
def key_operation(session: Session) -> Iterator[Session]:
    """Commit on success or refusal (re-raised), roll back on any other exception.

    Key operations check everything before they change anything, so what a refusal leaves
    in the session is its audit event: committing it keeps a record of the refused attempt.
    Any other exception is a fault, and nothing of the attempt may be stored.
    """
    try:
        yield session
    except KeyOperationError:
        session.commit()
        raise
    except KeyUnavailable as exc:
        # A key could not be sealed or unsealed (a master key service that refused or did not
        # answer): nothing of the attempt is kept, and people get the reason, not an error page.
        session.rollback()
        raise KeyOperationError(str(exc), code=exc.code) from None
    except BaseException:
        session.rollback()
        raise
    session.commit()
