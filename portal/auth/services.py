"""Looking up and authenticating users."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.auth.passwords import hash_password, verify_password
from portal.models import ROLES, Organization, User


class UserError(ValueError):
    """A user cannot be created as asked; the message says why."""


def authenticate(session: Session, email: str, password: str) -> tuple[User | None, User | None]:
    """Return (the user, if the password is correct; the account the email names, if any).

    The password is verified either way (against a dummy hash for an unknown email), so
    both answers cost the same time.
    """
    account = session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    ok = verify_password(account.password_hash if account else None, password)
    return (account if account is not None and ok else None), account


def load_user(session: Session, cookie_id: str) -> User | None:
    """Return the user named by a login cookie, if its session token is still current."""
    user_id, _, token = cookie_id.partition(":")
    try:
        key = uuid.UUID(user_id)
    except ValueError:
        return None
    user = session.get(User, key)
    if user is None or not token or user.session_token != token:
        return None
    return user


def create_user(
    session: Session, email: str, password: str, role: str, org: Organization | None
) -> User:
    """Add a user; support staff belong to no organisation, everyone else to one."""
    email = email.strip().lower()
    if "@" not in email:
        raise UserError(f"not an email address: {email}")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if role != "support" and org is None:
        raise UserError("an organisation is required for this role")
    if len(password) < 10:
        raise UserError("the password must be at least 10 characters")
    if session.scalar(select(User.id).where(func.lower(User.email) == email)):
        raise UserError(f"a user with email {email} exists already")
    user = User(
        email=email,
        password_hash=hash_password(password),
        role=role,
        company_id=None if role == "support" else org.id,
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, email: str, password: str) -> User:
    """Replace a user's password; every session opened with the old one ends."""
    user = session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        raise UserError(f"no user with email {email}")
    if len(password) < 10:
        raise UserError("the password must be at least 10 characters")
    user.password_hash = hash_password(password)
    user.rotate_session_token()
    return user
