"""SoftHSM2 for the ``pkcs11`` provider: a token in a temporary directory, one per test process.

The portal loads the PKCS#11 module into its own process, so there is no server to kill.
"Unreachable" is the token's directory moving away (``stop``) and back (``start``): SoftHSM
then answers CKR_GENERAL_ERROR for the token and will not initialise until it is back, as
an HSM whose device or network link is gone. (``p11-kit server``, a process one could kill,
was tried: Debian 12's p11-kit 0.24 cannot carry AES-GCM parameters over its RPC.)

Keys are administered from a helper process, as a customer's HSM console would: login is per
process in PKCS#11, so an administrator's session in the test process would share (and on
close, end) the portal's login. ``SOFTHSM2_CONF`` is set in ``os.environ`` before any SoftHSM
is loaded, so the portal here and every child process (CLI, workers) finds the same token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.keyservices import require_service

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN = "byok"
REVOKED = ".revoked"

# The administrator: reads the PIN, then one command a line; answers "ok" or "error <Name>".
ADMIN = r"""
import sys
import pkcs11
from pkcs11 import Attribute as A, KeyType, ObjectClass
session = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]).open(
    rw=True, user_pin=sys.stdin.readline().strip())
def key(label):
    return session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=label)
for line in sys.stdin:
    verb, *args = line.split()
    try:
        if verb == "new":
            session.generate_key(KeyType.AES, 256, label=args[0], id=bytes.fromhex(args[1]),
                store=True, template={A.SENSITIVE: True, A.EXTRACTABLE: args[2] == "1",
                A.PRIVATE: True, A.ENCRYPT: True, A.DECRYPT: True})
        elif verb == "label":
            key(args[0])[A.LABEL] = args[1]
        elif verb == "decrypt":
            key(args[0])[A.DECRYPT] = args[1] == "1"
        print("ok", flush=True)
    except Exception as exc:
        print("error", type(exc).__name__, flush=True)
"""

# A portal process of its own (its own PKCS#11 login): describe a key, print the outcome.
PROBE = r"""
import json, sys
from portal.keys.custody import KeyRef
from portal.keys.custody.pkcs11_hsm import start
try:
    info = start(json.loads(sys.stdin.read())).describe(KeyRef("pkcs11", sys.argv[1]))
    print("ok", info.version)
except Exception as exc:
    print(type(exc).__name__, exc, repr(exc))
"""


class SoftHSM:
    """A SoftHSM2 token the tests point the portal at (the RunningKeyService shape)."""

    provider = "pkcs11"

    def __init__(self, home: Path, pin: str) -> None:
        """Use the token initialised under home with user PIN pin."""
        self.home = home
        self.pin = pin
        self.tokens = home / "tokens"
        self._admin: subprocess.Popen | None = None

    def __repr__(self) -> str:
        """Name the token directory, never the PIN."""
        return f"<SoftHSM {self.tokens}>"

    @property
    def config(self) -> dict[str, Any]:
        """Settings with the PIN itself."""
        return {"PKCS11_MODULE": MODULE, "PKCS11_TOKEN_LABEL": TOKEN, "PKCS11_PIN": self.pin}

    @property
    def env(self) -> dict[str, str]:
        """What a child process started with an exact environment needs to find the token."""
        return {"SOFTHSM2_CONF": str(self.home / "softhsm2.conf")}

    def pin_file_config(self) -> dict[str, Any]:
        """Settings with the PIN in a 0600 file (trailing newline included, as editors leave)."""
        path = self.home / "user.pin"
        path.write_text(self.pin + "\n")
        path.chmod(0o600)
        return {**self.config, "PKCS11_PIN": None, "PKCS11_PIN_FILE": str(path)}

    def new_key(self, label: str | None = None, extractable: bool = False) -> str:
        """Generate a sensitive, non-extractable AES-256 token key and return its label."""
        label = label or f"byok-test-{secrets.token_hex(6)}"
        self._command(f"new {label} {secrets.token_hex(8)} {int(extractable)}")
        return label

    def rotate(self, ref: str) -> None:
        """PKCS#11 keys have no versions: a new key under a new label is a re-wrap, not this."""
        raise NotImplementedError("a PKCS#11 key has no versions to rotate; re-wrap instead")

    def revoke(self, ref: str) -> None:
        """Relabel the key, so the portal finds no key with its label."""
        self._command(f"label {ref} {ref}{REVOKED}")

    def restore(self, ref: str) -> None:
        """Give the key its label back."""
        self._command(f"label {ref}{REVOKED} {ref}")

    def forbid_decrypt(self, ref: str) -> None:
        """Clear CKA_DECRYPT: the key is found but may not decrypt."""
        self._command(f"decrypt {ref} 0")

    def allow_decrypt(self, ref: str) -> None:
        """Set CKA_DECRYPT again."""
        self._command(f"decrypt {ref} 1")

    def stop(self) -> None:
        """Take the token away (its directory moves): calls find the HSM unreachable."""
        self._stop_admin()
        self.tokens.rename(self.home / "tokens.away")

    def start(self) -> None:
        """Put the token back, with the same keys."""
        if (self.home / "tokens.away").exists():
            (self.home / "tokens.away").rename(self.tokens)

    def probe(self, config: dict[str, Any], ref: str) -> str:
        """Describe ref from a new portal process with config: "ok <version>" or the error."""
        result = subprocess.run(
            [sys.executable, "-c", PROBE, ref],
            input=json.dumps(config),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return (result.stdout + result.stderr).strip()

    def _command(self, line: str) -> None:
        """Run one administrator command in the helper process."""
        if self._admin is None or self._admin.poll() is not None:
            self._admin = subprocess.Popen(
                [sys.executable, "-c", ADMIN, MODULE, TOKEN],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self._admin.stdin.write(self.pin + "\n")
        self._admin.stdin.write(line + "\n")
        self._admin.stdin.flush()
        answer = self._admin.stdout.readline().strip()
        assert answer == "ok", f"SoftHSM administrator: {line.split()[0]}: {answer or 'died'}"

    def _stop_admin(self) -> None:
        """End the helper process (it holds the token's files open)."""
        if self._admin is not None:
            self._admin.kill()
            self._admin.wait(timeout=10)
            self._admin = None


@pytest.fixture(scope="session")
def pkcs11_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """A SoftHSM2 token labelled "byok" in this test process's own directory."""
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).is_file():
        require_service("SoftHSM2", "apt-get install softhsm2")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        require_service("python-pkcs11", "pip install 'byok-portal[pkcs11]'")
    home = tmp_path_factory.mktemp("softhsm")
    (home / "tokens").mkdir()
    conf = home / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {home / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    # Before anything in this process loads SoftHSM; child processes inherit it.
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    hsm = SoftHSM(home, pin)
    try:
        init = [util, "--init-token", "--free", "--label", TOKEN, "--pin", pin]
        result = subprocess.run(
            [*init, "--so-pin", secrets.token_hex(8)], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            require_service("SoftHSM2", f"softhsm2-util --init-token failed: {result.stderr}")
        yield hsm
    finally:
        hsm.start()
        hsm._stop_admin()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
