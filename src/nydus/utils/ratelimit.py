"""A token bucket: at most `rate` bytes per second on average, `burst` bytes at once."""

from __future__ import annotations

import threading
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """Thread safe. `take(n)` waits until `n` bytes may pass; a request larger than the
    bucket passes once the bucket is full and leaves it in debt, so the average holds."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = threading.Lock()
        self.total = 0

    def take(self, n: int, stop: threading.Event | None = None) -> bool:
        """Wait for `n` bytes of budget; False if `stop` was set while waiting."""
        while True:
            with self._lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= min(n, self.burst):
                    self.tokens -= n
                    self.total += n
                    return True
                wait = (min(n, self.burst) - self.tokens) / self.rate
            if stop is None:
                time.sleep(min(wait, 0.1))
            elif stop.wait(min(wait, 0.1)):
                return False
