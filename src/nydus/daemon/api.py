"""nydusd's HTTP API on a unix socket (interfaces.md §4.4).

A small threaded HTTP/1.1 server: one thread per connection, keep-alive, and idle
connections are never closed (nydus-snapshotter treats a hang-up as daemon death).

The service raises domain errors; `STATUS` is the one place that turns them into HTTP
statuses (any other `NydusError` is a 500). Every error body is
`{"code": "UNDEFINED", "message": ...}`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from nydus.errors import InvalidArgument, NotFound, NotReady, NydusError, Unsupported
from nydus.utils.paths import not_a_directory

if TYPE_CHECKING:
    from nydus.daemon.service import NydusDaemon

__all__ = ["STATUS", "ApiServer", "status_of"]

log = logging.getLogger(__name__)

#: error kind -> HTTP status, first match wins (subclasses before their bases)
STATUS: tuple[tuple[type[NydusError], HTTPStatus], ...] = (
    (NotFound, HTTPStatus.NOT_FOUND),
    (InvalidArgument, HTTPStatus.BAD_REQUEST),  # ConfigError included
    (Unsupported, HTTPStatus.NOT_IMPLEMENTED),
    (NotReady, HTTPStatus.SERVICE_UNAVAILABLE),
)


def status_of(exc: NydusError) -> HTTPStatus:
    """The HTTP status that reports `exc`: its kind's, else 500."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


Query = dict[str, str]
Handler = Callable[[Query, Any], Any]


class _Response:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status = status
        self.body = body


NO_CONTENT = _Response(HTTPStatus.NO_CONTENT)


def _check_socket_dir(parent: str) -> None:
    """The socket's directory must exist and must not let other users swap the socket: not
    writable by others unless sticky (like /tmp)."""
    why = not_a_directory(parent)
    if why is not None:
        raise NydusError(f"API socket directory {parent} {why}")
    mode = os.stat(parent).st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise NydusError(
            f"API socket directory {parent} is writable by every user and not sticky "
            f"(mode {stat.S_IMODE(mode):04o}): another user could replace the socket"
        )


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    api: ApiServer

    def server_bind(self) -> None:
        """Bind, then make the socket owner-only before `listen` (whatever the umask; no
        client can connect in between, as nothing listens yet)."""
        super().server_bind()
        os.chmod(self.socket.getsockname(), 0o600)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Nydus API"
    timeout = None  # keep idle connections open for as long as the client wants
    server: _Server

    def version_string(self) -> str:
        return "Nydus API"

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            resp = self.server.api.dispatch(self.command, url.path, query, raw)
        except NydusError as exc:
            resp = _Response(status_of(exc), {"code": "UNDEFINED", "message": str(exc)})
        except Exception as exc:
            log.exception("api: %s %s failed", self.command, self.path)
            resp = _Response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"code": "UNDEFINED", "message": f"internal error: {exc}"},
            )
        self._send(resp)

    def _send(self, resp: _Response) -> None:
        body = b"" if resp.body is None else json.dumps(resp.body).encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/json")
        if resp.status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _handle


class ApiServer:
    """Routes API requests to a `NydusDaemon`."""

    def __init__(self, daemon: NydusDaemon, path: str) -> None:
        self.daemon = daemon
        self.path = os.path.abspath(path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        d = daemon
        self.routes: dict[str, dict[str, Handler]] = {
            "/api/v1/daemon": {
                "GET": lambda q, b: d.daemon_info(),
                "PUT": lambda q, b: self._set_log_level(b),
            },
            "/api/v1/daemon/events": {"GET": lambda q, b: d.events()},
            "/api/v1/daemon/backend": {
                "GET": lambda q, b: d.backend_info(self._need(q, "mountpoint"))
            },
            "/api/v1/daemon/start": {"PUT": lambda q, b: self._start()},
            "/api/v1/daemon/exit": {"PUT": lambda q, b: self._exit()},
            "/api/v1/daemon/fuse/sendfd": {"PUT": self._unsupported},
            "/api/v1/daemon/fuse/takeover": {"PUT": self._unsupported},
            "/api/v1/mount": {
                "POST": lambda q, b: self._mount(q, b, replace=False),
                "PUT": lambda q, b: self._mount(q, b, replace=True),
                "DELETE": lambda q, b: self._umount(q),
            },
            "/api/v1/metrics": {"GET": lambda q, b: d.fs_metrics(q.get("id"))},
            "/api/v1/metrics/files": {
                "GET": lambda q, b: d.files_metrics(q.get("id"), q.get("latest") == "true")
            },
            "/api/v1/metrics/pattern": {"GET": lambda q, b: d.pattern_metrics(q.get("id"))},
            "/api/v1/metrics/pattern/files": {
                "GET": lambda q, b: d.pattern_metrics(q.get("id"), "files")
            },
            "/api/v1/metrics/pattern/chunks": {
                "GET": lambda q, b: d.pattern_metrics(q.get("id"), "chunks")
            },
            "/api/v1/metrics/backend": {"GET": lambda q, b: d.backend_metrics(q.get("id"))},
            "/api/v1/metrics/blobcache": {"GET": lambda q, b: d.blobcache_metrics(q.get("id"))},
            "/api/v1/metrics/inflight": {"GET": lambda q, b: self._inflight()},
            "/api/v1/config": {
                "GET": lambda q, b: d.runtime_config(q.get("id")),
                "PUT": self._put_config,
            },
            "/api/v2/daemon": {
                "GET": lambda q, b: d.daemon_info(with_backends=False),
                "PUT": lambda q, b: self._set_log_level(b),
            },
            "/api/v2/blobs": {
                "GET": self._unsupported,
                "PUT": self._unsupported,
                "DELETE": self._unsupported,
            },
        }

    # ---- routing -----------------------------------------------------------------------
    def dispatch(self, method: str, path: str, query: Query, raw: bytes) -> _Response:
        methods = self.routes.get(path.rstrip("/") or path)
        if methods is None:
            raise NotFound(f"no route for {path}")
        handler = methods.get(method)
        if handler is None:
            raise InvalidArgument(f"method {method} is not supported on {path}")
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"request body is not JSON: {exc}") from None
        out = handler(query, body)
        if isinstance(out, _Response):
            return out
        return _Response(HTTPStatus.OK, out)

    @staticmethod
    def _need(query: Query, key: str) -> str:
        v = query.get(key)
        if not v:
            raise InvalidArgument(f"query parameter {key!r} is required")
        return v

    def _unsupported(self, query: Query, body: Any) -> _Response:
        raise Unsupported("not supported by this nydusd")

    def _mount(self, query: Query, body: Any, replace: bool) -> _Response:
        self.daemon.api_mount(self._need(query, "mountpoint"), body, replace=replace)
        return NO_CONTENT

    def _umount(self, query: Query) -> _Response:
        self.daemon.api_umount(self._need(query, "mountpoint"))
        return NO_CONTENT

    def _set_log_level(self, body: Any) -> _Response:
        if not isinstance(body, dict) or not isinstance(body.get("log_level"), str):
            raise InvalidArgument('expected {"log_level": "<level>"}')
        self.daemon.set_log_level(body["log_level"])
        return NO_CONTENT

    def _start(self) -> _Response:
        self.daemon.api_start()
        return NO_CONTENT

    def _exit(self) -> _Response:
        self.daemon.request_exit()
        return NO_CONTENT

    def _inflight(self) -> _Response:
        items = self.daemon.inflight()
        return _Response(HTTPStatus.OK, items) if items else NO_CONTENT

    def _put_config(self, query: Query, body: Any) -> _Response:
        if not isinstance(body, dict):
            raise InvalidArgument("expected a JSON object")
        self.daemon.update_runtime_config(query.get("id"), body)
        return NO_CONTENT

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve in a background thread."""
        _check_socket_dir(os.path.dirname(os.path.abspath(self.path)))
        try:
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise NydusError(f"API socket path {self.path} exists and is not a socket")
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NydusError(f"cannot remove old API socket {self.path}: {exc.strerror}") from exc
        try:
            server = _Server(self.path, _RequestHandler)
        except OSError as exc:
            raise NydusError(
                f"cannot listen on API socket {self.path}: {exc.strerror or exc}"
            ) from exc
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            name="nydusd-api",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )
        self._thread.start()
        log.info("api server listening on %s", self.path)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        try:
            server.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        server.server_close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
