"""A real nginx (TLS, path prefix) in front of the real gunicorn-served portal and its worker.

Used by tests/test_nginx_e2e.py. The nginx site is rendered from ``SITE_TEMPLATE``, the same
text docs/deploy.md shows operators (a test checks that the two stay identical).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.processes import run_cli

ROOT = Path(__file__).resolve().parents[2]
NGINX = Path("/usr/sbin/nginx")
PREFIX = "/byok"

# The server block of docs/deploy.md; {placeholders} are filled in per installation.
SITE_TEMPLATE = """\
server {{
    listen {listen} ssl http2;
    server_name {server_name};

    ssl_certificate     {certificate};
    ssl_certificate_key {certificate_key};
    ssl_protocols       TLSv1.2 TLSv1.3;

    add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
    client_max_body_size 26m;

    location /byok/ {{
        proxy_pass http://{upstream}/;
        proxy_redirect off;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-Prefix /byok;
    }}
}}
"""

# What the test wraps around the site: everything inside its own folder, nothing in /var.
MAIN_TEMPLATE = """\
{user}worker_processes 1;
error_log {home}/error.log notice;

events {{
    worker_connections 256;
}}

http {{
    access_log {home}/access.log;
    client_body_temp_path {home}/client_body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;

{site}}}
"""


def site_config(
    listen: str, server_name: str, certificate: str, certificate_key: str, upstream: str
) -> str:
    """Render the nginx server block that serves the portal under /byok/."""
    return SITE_TEMPLATE.format(
        listen=listen,
        server_name=server_name,
        certificate=certificate,
        certificate_key=certificate_key,
        upstream=upstream,
    )


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a throwaway self-signed certificate for 127.0.0.1 and its key (mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / "portal.crt"
    key_path = folder / "portal.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own process group, its output going to ``log``."""
    handle = open(log, "wb")  # noqa: SIM115 - the child owns it; closed when the test ends
    try:
        return subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        handle.close()


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started by ``start_process`` and everything in its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Whatever the leader left behind in its group (e.g. an RQ work horse).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_until(check: Callable[[], bool], what: str, procs: dict, timeout: float = 30) -> None:
    """Poll ``check`` until it is true; fail early, with the logs, if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{tail(log)}" for n, (_p, log) in procs.items())
            raise AssertionError(f"{what} not ready after {timeout}s\n{logs}")
        time.sleep(0.1)


def tail(log: Path, lines: int = 40) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Response:
    """An HTTP response read in full."""

    status: int
    headers: http.client.HTTPMessage
    body: str


@dataclass
class ProxiedPortal:
    """nginx on https://127.0.0.1:<port>/byok/ in front of gunicorn and an RQ worker."""

    port: int
    home: Path
    certificate: Path
    env: dict[str, str]
    procs: dict[str, tuple[subprocess.Popen, Path]] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The scheme, host and port the browser uses."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The portal's address behind nginx."""
        return f"{self.origin}{PREFIX}/"

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts exactly the throwaway certificate."""
        return ssl.create_default_context(cafile=str(self.certificate))

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        source: str = "127.0.0.1",
    ) -> Response:
        """Send one request through nginx from the loopback address ``source``."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            self.port,
            context=self.tls_context(),
            timeout=15,
            source_address=(source, 0),
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            raw = conn.getresponse()
            return Response(raw.status, raw.headers, raw.read().decode(errors="replace"))
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop nginx, the web server and the worker (each with its process group)."""
        for name in ("nginx", "web", "worker"):
            if name in self.procs:
                stop_process(self.procs[name][0])

    def logs(self) -> str:
        """Every process's recent output, for failure messages."""
        return "\n".join(f"--- {n}\n{tail(log)}" for n, (_p, log) in self.procs.items())


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run a ``byok-portal`` command (as an operator would) and return its output."""
    done = run_cli(env, *args, stdin=stdin, timeout=60, inherit=False, cwd=ROOT)
    assert done.returncode == 0, f"byok-portal {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Tell whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


def start_proxied_portal(
    home: Path, env: dict[str, str], web_port: int, nginx_port: int
) -> ProxiedPortal:
    """Start gunicorn (2 workers), an RQ worker and nginx; return when all answer."""
    home.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(home / "tls")
    portal = ProxiedPortal(nginx_port, home, cert, env)
    try:
        python = [sys.executable, "-m", "portal.cli"]
        portal.procs["web"] = (
            start_process(
                [*python, "serve", "--bind", f"127.0.0.1:{web_port}", "--workers", "2"],
                env,
                home / "web.log",
            ),
            home / "web.log",
        )
        portal.procs["worker"] = (
            start_process([*python, "worker"], env, home / "worker.log"),
            home / "worker.log",
        )
        site = site_config(
            f"127.0.0.1:{nginx_port}", "127.0.0.1", str(cert), str(key), f"127.0.0.1:{web_port}"
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        indented = "".join(f"    {line}\n" if line else "\n" for line in site.splitlines())
        (home / "nginx.conf").write_text(MAIN_TEMPLATE.format(user=user, home=home, site=indented))
        check = subprocess.run(
            [str(NGINX), "-t", "-p", str(home), "-c", str(home / "nginx.conf"), "-e",
             str(home / "error.log"), "-g", f"pid {home / 'nginx.pid'};"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        portal.procs["nginx"] = (
            start_process(
                [str(NGINX), "-p", str(home), "-c", str(home / "nginx.conf"), "-e",
                 str(home / "error.log"), "-g", f"daemon off; pid {home / 'nginx.pid'};"],
                env,
                home / "nginx.out",
            ),
            home / "error.log",
        )  # fmt: skip
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{web_port}/healthz"), "gunicorn", portal.procs
        )
        wait_until(
            lambda: _answers(f"{portal.url}healthz", portal.tls_context()), "nginx", portal.procs
        )
    except BaseException:
        portal.stop()
        raise
    return portal
