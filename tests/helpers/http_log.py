"""A recording TCP proxy on loopback: every HTTP request a client sends through it is noted
(method, path, byte range) before it is relayed to the real server unchanged.

``RecordingProxy(target_port)``; point the client at ``proxy.host``; ``proxy.requests`` lists
what went through, ``proxy.blob_ranges(digest)`` the Range requests for one blob.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from typing import Self

__all__ = ["RecordingProxy", "Request"]

_RANGE = re.compile(rb"^range:\s*bytes=(\d+)-(\d*)\s*$", re.IGNORECASE | re.MULTILINE)
_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    start: int | None = None  # Range: bytes=start-end (end inclusive)
    end: int | None = None


class RecordingProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def blob_ranges(self, digest: str) -> list[tuple[int, int]]:
        """(start, end exclusive) of every GET of blob `digest` (sha256:...) with a Range."""
        with self._lock:
            reqs = list(self.requests)
        return [
            (r.start, r.end + 1)
            for r in reqs
            if r.method == "GET"
            and r.path.split("?")[0].endswith("/blobs/" + digest)
            and r.start is not None
            and r.end is not None
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        body_left = 0
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                while True:
                    if body_left:
                        n = min(body_left, len(buf))
                        buf, body_left = buf[n:], body_left - n
                        if body_left:
                            break
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buf = buf[:end], buf[end + 4 :]
                    self._note(head)
                    m = _LENGTH.search(head)
                    body_left = int(m.group(1)) if m else 0
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _note(self, head: bytes) -> None:
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(line) < 2:
            return
        m = _RANGE.search(head)
        start = end = None
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else None
        with self._lock:
            self.requests.append(Request(line[0], line[1], start, end))

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
