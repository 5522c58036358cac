"""Every audit action the portal records, and the categories they fall in.

One list for the code that emits events and the Audit Log that filters them:
tests/test_audit_actions.py fails if an emit() passes anything but an ``Action``.
A StrEnum member is its string, so stored events and the hash chain do not change.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """The first part of an action name; the Audit Log's Type menu groups by it."""

    BYOK = "BYOK"
    ENCRYPTION_KEY = "encryption_key"
    AUTH = "auth"
    AUDIT = "audit"


class Action(StrEnum):
    """One kind of audit event, in the order the Type menu offers them."""

    KEY_GENERATED = "BYOK.key_generated"
    KEY_TEST = "BYOK.key_test"
    BYOK_ENABLED = "BYOK.enabled"
    BYOK_DISABLED = "BYOK.disabled"
    KEY_SERVICE_TEST = "BYOK.key_service_test"
    KEY_REWRAPPED = "BYOK.key_rewrapped"
    CUSTODY_MIGRATED = "BYOK.custody_migrated"
    ENCRYPT_EXISTING_STARTED = "BYOK.encrypt_existing_started"
    ROTATION_STARTED = "BYOK.rotation_started"
    ROTATION_PAUSED = "BYOK.rotation_paused"
    ROTATION_RESUMED = "BYOK.rotation_resumed"
    ROTATION_CANCELLED = "BYOK.rotation_cancelled"
    ROTATION_THROTTLED = "BYOK.rotation_throttled"
    ROTATION_RETRY = "BYOK.rotation_retry"
    ROTATION_PROGRESS = "BYOK.rotation_progress"
    ROTATION_COMPLETED = "BYOK.rotation_completed"
    ROTATION_FAILED = "BYOK.rotation_failed"
    KEY_RETIRED = "BYOK.key_retired"
    DATA_EXPORTED = "BYOK.data_exported"
    DECRYPT_FAILED = "encryption_key.decrypt_failed"
    KEY_SERVICE_DENIED = "encryption_key.key_service_denied"
    KEY_SERVICE_UNREACHABLE = "encryption_key.key_service_unreachable"
    KEY_DECLARED_LOST = "encryption_key.declared_lost"
    KEY_RESTORE = "encryption_key.restore"
    KEY_RESTORED = "encryption_key.restored"
    KEY_REVOKED = "encryption_key.revoked"
    LOGIN = "auth.login"
    LOGIN_FAILED = "auth.login_failed"
    LOGOUT = "auth.logout"
    PASSWORD_CHANGED = "auth.password_changed"  # noqa: S105 (an action name, not a password)
    REAUTH_FAILED = "auth.reauth_failed"
    ACCESS_DENIED = "auth.access_denied"
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_PRUNED = "audit.pruned"

    @property
    def category(self) -> Category:
        """The category this action is filed under (the part before the first dot)."""
        return Category(self.value.split(".", 1)[0])
