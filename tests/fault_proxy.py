"""A fault-injecting HTTP proxy of our own, on loopback, in front of a real server (the
registry): the faults a real server cannot be made to show on demand.

`FaultProxy(upstream_host)` listens on 127.0.0.1:<free port> and forwards every request.
Requests matching `match` (default: blob GETs) consume one fault from `faults` (a list the
test fills) or, when it is empty, get `sticky` (a fault applied until cleared). Faults:

* `"429:<s>"` / `"503:<s>"`: that status with `Retry-After: <s>` (`"503"`: none);
* `"reset"`: the upstream headers and half the body, then the connection is reset;
* `"short"`: a consistent reply (Content-Length matches) one byte shorter than the range;
* `"stall"`: the request is read, nothing is ever answered (until the proxy stops);
* `"drip:<s>"`: the reply one byte every `<s>` seconds;
* `"ignore-range"`: the Range header is dropped: 200 with the whole blob;
* `"flip"`: the reply with its middle byte flipped.

Bodies are relayed in 64 KiB pieces (bounded memory); `sent` counts body bytes written.
With no fault queued it is a recording proxy: `blob_ranges(digest)` lists the byte ranges
clients asked of one blob.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECE = 64 << 10
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def _blob_get(method: str, path: str) -> bool:
    return method == "GET" and "/blobs/sha256:" in path


class FaultProxy:
    def __init__(self, upstream: str, match: Callable[[str, str], bool] = _blob_get) -> None:
        self.upstream = upstream
        self.match = match
        self.faults: list[str] = []
        self.sticky: str | None = None
        self.seen: list[tuple[str, str, str]] = []  # (method, path, fault or "")
        self.ranges: list[tuple[str, str, str]] = []  # (method, path, Range header or "")
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.sticky = None

    def matched(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [s for s in self.seen if self.match(s[0], s[1])]

    def blob_ranges(self, digest: str) -> list[tuple[int, int]]:
        """(start, end exclusive) of every GET of blob `digest` (sha256:...) with a Range."""
        with self._lock:
            reqs = list(self.ranges)
        out = []
        for method, path, rng in reqs:
            if method != "GET" or not path.split("?")[0].endswith("/blobs/" + digest):
                continue
            first, _, last = rng.removeprefix("bytes=").partition("-")
            if first.isdigit() and last.isdigit():
                out.append((int(first), int(last) + 1))
        return out

    def _next_fault(self, method: str, path: str) -> str:
        with self._lock:
            fault = ""
            if self.match(method, path):
                fault = self.faults.pop(0) if self.faults else (self.sticky or "")
            self.seen.append((method, path, fault))
            return fault

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.ranges.append((h.command, h.path, h.headers.get("range") or ""))
        fault = self._next_fault(h.command, h.path)
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else None
        kind, _, arg = fault.partition(":")
        if kind in ("429", "503"):
            h.send_response(int(kind))
            if arg:
                h.send_header("Retry-After", arg)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if kind == "stall":
            self._stop.wait(120)
            h.close_connection = True
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP | {"host"}}
        if kind == "ignore-range":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            up = conn.getresponse()
            self._relay(h, up, kind, arg)
        finally:
            conn.close()

    def _relay(
        self, h: BaseHTTPRequestHandler, up: http.client.HTTPResponse, kind: str, arg: str
    ) -> None:
        total = up.getheader("content-length")
        h.send_response(up.status, up.reason)
        for k, v in up.getheaders():
            if k.lower() in HOP or k.lower() == "content-length":
                continue
            if kind == "short" and k.lower() == "content-range":
                continue
            h.send_header(k, v)
        if h.command == "HEAD" or total is None:
            data = up.read()
            h.send_header(
                "Content-Length", total if h.command == "HEAD" and total else str(len(data))
            )
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
            return
        size = int(total)
        if kind == "short":
            size -= 1
        h.send_header("Content-Length", str(size))
        h.end_headers()
        left, done = size, 0
        try:
            while left > 0:
                piece = up.read(min(PIECE, left))
                if not piece:
                    break
                if kind == "flip" and done <= size // 2 < done + len(piece):
                    i = size // 2 - done
                    piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1 :]
                if kind == "reset" and done + len(piece) >= size // 2:
                    h.wfile.write(piece[: max(0, size // 2 - done)])
                    h.wfile.flush()
                    h.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    h.close_connection = True
                    return
                if kind == "drip":
                    for i in range(len(piece)):
                        if self._stop.wait(float(arg or 1)):
                            return
                        h.wfile.write(piece[i : i + 1])
                        h.wfile.flush()
                        self._count(1)
                else:
                    h.wfile.write(piece)
                    self._count(len(piece))
                done += len(piece)
                left -= len(piece)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
