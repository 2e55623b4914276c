"""Start a real CNCF distribution registry (Debian's `docker-registry`) for tests.

`start_registry(workdir)` runs one on a free loopback port with filesystem storage and returns
its `host` ("127.0.0.1:PORT") and a `stop` callable. Options: `htpasswd={user: password}` for
Basic auth, `token=start_token_server(...)` for Bearer token auth against a small token server
that signs RS256 JWTs with openssl (the registry verifies them with a self-signed certificate).

A plain module so that any test package can use it; tests/oci/conftest.py wraps it as fixtures.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"


def registry_available() -> bool:
    return Path(REGISTRY_BIN).exists() and shutil.which("openssl") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningRegistry:
    host: str  # "127.0.0.1:PORT"
    root: Path  # storage root directory
    log_path: Path
    stop: Callable[[], None]

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@dataclass
class TokenServer:
    """A token endpoint for the registry's `auth.token`: grants any requested scope to a known
    user (or anonymously if `anonymous`), records each request in `requests`."""

    realm: str
    service: str
    issuer: str
    cert_path: Path
    stop: Callable[[], None]
    requests: list[dict[str, str]] = field(default_factory=list)
    post_supported: bool = True  # False: answer 404 to POST like registries without OAuth2
    bad_signature: bool = False  # True: sign with a key the registry does not trust


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *args], input=data, capture_output=True, check=True)
    return done.stdout


def start_token_server(
    workdir: Path,
    users: dict[str, str] | None = None,
    *,
    anonymous: bool = False,
    expires_in: int = 300,
) -> TokenServer:
    """Serve `GET|POST /token` on a free loopback port (see TokenServer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, cert = workdir / "token.key", workdir / "token.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        "/CN=nydus-test-token",
    )
    other_key = workdir / "other.key"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(other_key)
    )
    der = _openssl("x509", "-in", str(cert), "-outform", "DER")
    known = dict(users or {})
    server_box: list[TokenServer] = []

    def issue(subject: str, scope: str, service: str) -> bytes:
        access = []
        for item in scope.split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {
            "iss": "nydus-test-issuer",
            "sub": subject,
            "aud": service,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": f"{now}-{len(server_box[0].requests)}",
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signer = other_key if server_box[0].bad_signature else key
        signature = _openssl("dgst", "-sha256", "-sign", str(signer), data=signing_input.encode())
        token = f"{signing_input}.{_b64url(signature)}"
        return json.dumps(
            {
                "token": token,
                "access_token": token,
                "expires_in": expires_in,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            }
        ).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, fields: dict[str, str], user: str | None, password: str | None) -> None:
            server = server_box[0]
            server.requests.append(
                {
                    "method": self.command,
                    "user": user or "",
                    "scope": fields.get("scope", ""),
                    "grant_type": fields.get("grant_type", ""),
                }
            )
            if user is None and not anonymous:
                return self._reply(401, b'{"details":"credentials required"}')
            if user is not None and known.get(user) != password:
                return self._reply(401, b'{"details":"wrong credentials"}')
            self._reply(200, issue(user or "", fields.get("scope", ""), fields.get("service", "")))

        def do_GET(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            user = password = None
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            self._handle(query, user, password)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not server_box[0].post_supported:
                server_box[0].requests.append(
                    {"method": "POST", "user": "", "scope": "", "grant_type": ""}
                )
                return self._reply(404)
            form = dict(urllib.parse.parse_qsl(body.decode()))
            self._handle(form, form.get("username"), form.get("password"))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    server = TokenServer(
        realm=f"http://127.0.0.1:{httpd.server_address[1]}/token",
        service="nydus-test-registry",
        issuer="nydus-test-issuer",
        cert_path=cert,
        stop=stop,
    )
    server_box.append(server)
    return server


def _config(
    root: Path, port: int, htpasswd: Path | None, token: TokenServer | None, accesslog: bool
) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        f"    disabled: {'false' if accesslog else 'true'}",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: nydus-test-secret",
    ]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: nydus-test", f"    path: {htpasswd}"]
    if token is not None:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.cert_path}",
        ]
    return "\n".join(lines) + "\n"


def start_registry(
    workdir: Path,
    *,
    htpasswd: dict[str, str] | None = None,
    token: TokenServer | None = None,
    timeout: float = 15.0,
    accesslog: bool = False,
) -> RunningRegistry:
    """Start `docker-registry serve` under `workdir`; return when `/v2/` answers.
    `accesslog`: one Apache-style line per request in the log (method, path, status, bytes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    passwd_path = None
    if htpasswd:
        passwd_path = workdir / "htpasswd"
        entries = [
            subprocess.run(
                ["htpasswd", "-Bbn", user, password], capture_output=True, check=True, text=True
            ).stdout.strip()
            for user, password in htpasswd.items()
        ]
        passwd_path.write_text("\n".join(entries) + "\n")
    log_path = workdir / "registry.log"
    last_error = ""
    for _ in range(3):  # a free port can be taken between probing and binding
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config(root, port, passwd_path, token, accesslog))
        proc, stop = serve(config, log_path, append=False)
        if _wait_ready(f"http://127.0.0.1:{port}/v2/", proc, timeout):
            return RunningRegistry(f"127.0.0.1:{port}", root, log_path, stop)
        stop()
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start: {last_error}")


def serve(
    config: Path, log_path: Path, append: bool = True
) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    """Run `docker-registry serve CONFIG`; return the process and a stop callable."""
    with open(log_path, "ab" if append else "wb") as log:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    return proc, stop


def restart_registry(old: RunningRegistry, timeout: float = 15.0) -> RunningRegistry:
    """Start docker-registry again with the config (same port, same storage) of `old`."""
    port = old.host.rsplit(":", 1)[1]
    proc, stop = serve(old.root.parent / "config.yml", old.log_path)
    if not _wait_ready(f"http://127.0.0.1:{port}/v2/", proc, timeout):
        stop()
        raise AssertionError(
            "docker-registry did not restart: " + old.log_path.read_text(errors="replace")[-2000:]
        )
    return RunningRegistry(old.host, old.root, old.log_path, stop)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
