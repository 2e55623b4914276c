"""A throttling TCP proxy on loopback: ``ThrottleProxy(target_port, mbit=100)``.

Every connection to ``127.0.0.1:<proxy.port>`` is relayed to ``127.0.0.1:<target_port>``; all
bytes going to the server share one token bucket and all bytes coming back share another, each
refilled at ``mbit`` Mbit/s (a link of that speed in both directions; the bucket holds at most
``burst`` bytes).  Threads, one pair per connection.  Bounded in time: the proxy shuts itself
down (closing every connection) ``max_seconds`` after it started, and ``close()`` (or leaving the
``with`` block) stops it at once.
"""

from __future__ import annotations

import socket
import threading
import time

__all__ = ["ThrottleProxy", "TokenBucket"]


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` bytes banked; thread safe."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()
        self.total = 0

    def take(self, n: int, stop: threading.Event) -> bool:
        """Wait until ``n`` bytes may pass; False if ``stop`` was set meanwhile."""
        while not stop.is_set():
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n or (self.tokens >= self.burst and n > self.burst):
                    self.tokens -= n  # may go negative for one oversized piece
                    self.total += n
                    return True
                wait = (n - self.tokens) / self.rate
            stop.wait(min(wait, 0.05))
        return False


class ThrottleProxy:
    PIECE = 16 * 1024

    def __init__(
        self,
        target_port: int,
        *,
        mbit: float = 100.0,
        burst: int = 64 * 1024,
        max_seconds: float = 3600.0,
        target_host: str = "127.0.0.1",
    ) -> None:
        rate = mbit * 1_000_000 / 8
        self.up = TokenBucket(rate, burst)  # client -> server
        self.down = TokenBucket(rate, burst)  # server -> client
        self.mbit = mbit
        self.target = (target_host, target_port)
        self.stop = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._accept, name="throttle-accept", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ThrottleProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
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
        while not self.stop.is_set():
            if time.monotonic() > self.deadline:
                threading.Thread(target=self.close, daemon=True).start()
                return
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
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks += [client, server]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, self.up), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.down), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, bucket: TokenBucket) -> None:
        try:
            while not self.stop.is_set():
                data = src.recv(self.PIECE)
                if not data:
                    break
                if not bucket.take(len(data), self.stop):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
