"""The socket layer of HTTP backends: whole-request deadlines and prompt aborts.

httpx's timeouts apply to each socket operation, so a server that drips one byte per second
keeps a request alive forever, and a blocked read cannot be cancelled from another thread.
Here every socket operation of a backend request runs in short slices that check the
request's `RequestGuard` (set for the calling thread with `guarded`): its connect deadline,
its overall deadline and its abort flag. `GuardedTransport` is an `httpx.BaseTransport` over
an httpcore connection pool whose connections are made by `GuardedNetwork`, so the same
rules cover the registry client (tokens, redirects) and the object-store backends.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["GuardedTransport", "RequestGuard", "guarded", "ssl_context"]

#: longest a socket operation blocks before it looks at its guard again
SLICE = 0.1


class RequestGuard:
    """Deadlines and abort flag of one backend request (one attempt of it)."""

    __slots__ = ("aborted", "connect_deadline", "deadline", "reason")

    def __init__(self, timeout: float, connect_timeout: float) -> None:
        now = time.monotonic()
        self.deadline = now + timeout if timeout > 0 else math.inf
        self.connect_deadline = min(
            self.deadline, now + connect_timeout if connect_timeout > 0 else math.inf
        )
        self.aborted = False
        self.reason = ""

    def abort(self, reason: str) -> None:
        self.reason = reason
        self.aborted = True


_local = threading.local()


def current_guard() -> RequestGuard | None:
    guard: RequestGuard | None = getattr(_local, "guard", None)
    return guard


@contextlib.contextmanager
def guarded(guard: RequestGuard) -> Iterator[RequestGuard]:
    """Make `guard` rule every socket operation of this thread inside the block."""
    previous = current_guard()
    _local.guard = guard
    try:
        yield guard
    finally:
        _local.guard = previous


def _wait_slice(deadline: float, timeout_exc: type[Exception], what: str) -> float:
    """How long the next slice of a socket operation may block; raises when the request
    was aborted or its deadline passed."""
    guard = current_guard()
    if guard is not None:
        if guard.aborted:
            raise httpcore.ReadError(f"request aborted ({guard.reason})")
        deadline = min(deadline, guard.connect_deadline if what == "connect" else guard.deadline)
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_exc(f"{what} deadline exceeded")
    return min(SLICE, left)


def _deadline(timeout: float | None) -> float:
    return time.monotonic() + timeout if timeout else math.inf


class _GuardedStream(httpcore.NetworkStream):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = _deadline(timeout)
        while True:
            if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
                wait = 0.0
            else:
                wait = _wait_slice(deadline, httpcore.ReadTimeout, "read")
            self._sock.settimeout(wait or None)
            try:
                return self._sock.recv(max_bytes)
            except TimeoutError:
                continue
            except OSError as exc:
                raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        view = memoryview(buffer)
        while view:
            self._sock.settimeout(_wait_slice(deadline, httpcore.WriteTimeout, "write"))
            try:
                sent = self._sock.send(view)
            except TimeoutError:
                continue
            except OSError as exc:
                raise httpcore.WriteError(str(exc)) from exc
            view = view[sent:]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        deadline = _deadline(timeout)
        try:
            tls = ssl_context.wrap_socket(
                self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except (OSError, ssl.SSLError) as exc:
            self._sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        try:
            while True:
                tls.settimeout(_wait_slice(deadline, httpcore.ConnectTimeout, "TLS handshake"))
                try:
                    tls.do_handshake()
                    break
                except TimeoutError:
                    continue
        except (OSError, ssl.SSLError) as exc:
            tls.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            tls.close()
            raise
        return _GuardedStream(tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # a kept-alive connection with something to read (data or EOF) is unusable
            try:
                readable, _, _ = select.select([self._sock], [], [], 0)
            except (OSError, ValueError):
                return True
            return bool(readable)
        return None


class GuardedNetwork(httpcore.NetworkBackend):
    """Connects in slices (non-blocking connect + select) so a guard can stop it."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        deadline = _deadline(timeout)
        _wait_slice(deadline, httpcore.ConnectTimeout, "connect")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: OSError | None = None
        for family, kind, proto, _name, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                sock.setblocking(False)
                rc = sock.connect_ex(addr)
                while rc in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                    wait = _wait_slice(deadline, httpcore.ConnectTimeout, "connect")
                    _, writable, _ = select.select([], [sock], [], wait)
                    if writable:
                        rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    raise OSError(rc, os.strerror(rc))
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _GuardedStream(sock)
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
        raise httpcore.ConnectError(str(last) if last else f"no address for {host}")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not supported by backends")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.ProtocolError, httpx.RemoteProtocolError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.TimeoutException, httpx.TimeoutException),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc) or type(exc).__name__) from exc
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with _httpx_errors():
                close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport whose sockets obey the calling thread's `RequestGuard`."""

    def __init__(self, ssl_ctx: ssl.SSLContext, max_connections: int = 64) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_ctx,
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 2,
            keepalive_expiry=30.0,
            network_backend=GuardedNetwork(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            reply = self._pool.handle_request(core)
        assert isinstance(reply.stream, Iterable)
        return httpx.Response(
            status_code=reply.status,
            headers=reply.headers,
            stream=_Body(reply.stream),
            extensions=reply.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def ssl_context(skip_verify: bool, ca_cert_files: Iterable[str] = ()) -> ssl.SSLContext:
    """TLS settings of an HTTP backend: the system/certifi roots plus `ca_cert_files`, or no
    verification at all with `skip_verify`."""
    if skip_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = httpx.create_ssl_context()
    for path in ca_cert_files:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            from nydus.errors import ConfigError

            raise ConfigError(f"cannot load CA certificate file {path}: {exc}") from exc
    return ctx
