"""The request rules every HTTP blob backend (registry, s3, oss) follows.

* Deadline: each attempt must connect within `connect_timeout` and finish (headers and
  body) within `timeout` seconds of its start, however slowly the server drips bytes
  (`transport.RequestGuard`). One read with its retries stays within
  `(retry_limit + 1) * timeout` plus one attempt.
* Retries, up to `retry_limit`: dropped or refused connections, timeouts, 429 and 5xx, a
  body shorter than the range asked for, a 206 for another range. A `Retry-After` is waited
  for when it fits before the read's deadline; otherwise the read fails at once, saying so.
  Authentication failures and missing objects fail at once (no retry storm).
* Range: the answer must be the 206 of the range asked for, or a 200 whose body is streamed
  past the bytes before the range and cut after it: memory per request stays bounded by the
  range, whatever the blob's size.
* Circuit breaker: after `BREAKER_THRESHOLD` consecutive failed attempts the backend fails
  fast for `BREAKER_COOLDOWN` seconds, then lets one probe through; a success closes it.
* `close()` aborts every request in flight (each socket operation looks at its guard at least
  every `transport.SLICE` seconds), so a daemon stops promptly with a stalled backend.
* A read that finally fails is logged at WARNING with blob, range and cause.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx

from nydus.config import HttpCommon
from nydus.errors import StorageError
from nydus.oci.registry import parse_retry_after
from nydus.storage.backend import BackendBase
from nydus.storage.transport import GuardedTransport, RequestGuard, guarded, ssl_context
from nydus.utils.ranges import take_range

__all__ = ["CircuitBreaker", "HttpBackend", "Transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

BREAKER_THRESHOLD = 5
BREAKER_COOLDOWN = 3.0
BACKOFF_BASE = 0.2
BACKOFF_MAX = 2.0
ERROR_BODY_MAX = 16 << 10
DEFAULT_TIMEOUT = 5


class Transient(Exception):
    """A failed attempt worth retrying; `retry_after` is the server's wish in seconds."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class CircuitBreaker:
    """Counts consecutive failed attempts of one backend; when open, calls fail fast."""

    def __init__(
        self, name: str, threshold: int = BREAKER_THRESHOLD, cooldown: float = BREAKER_COOLDOWN
    ) -> None:
        self.name = name
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._cause = ""

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._failures >= self.threshold

    def refusal(self) -> str | None:
        """None when a request may go ahead, else why it must fail fast."""
        with self._lock:
            if self._failures < self.threshold:
                return None
            left = self._open_until - time.monotonic()
            if left > 0:
                return (
                    f"{self.name} is failing fast for {left:.1f} s more after "
                    f"{self._failures} consecutive failures (last: {self._cause})"
                )
            if self._probing:
                return f"{self.name} is being probed after {self._failures} consecutive failures"
            self._probing = True
            return None

    def record(self, ok: bool, cause: str = "") -> None:
        with self._lock:
            self._probing = False
            if ok:
                if self._failures >= self.threshold:
                    log.warning("%s answers again; circuit breaker closed", self.name)
                self._failures = 0
                return
            self._failures += 1
            self._cause = cause
            if self._failures >= self.threshold:
                if self._open_until <= time.monotonic():
                    log.warning(
                        "%s: %d consecutive failures (last: %s); failing fast for %.0f s",
                        self.name,
                        self._failures,
                        cause,
                        self.cooldown,
                    )
                self._open_until = time.monotonic() + self.cooldown


class HttpBackend(BackendBase):
    """Base of the HTTP blob backends. Subclasses implement `_open_range` (send the GET of
    a range and return the streamed response, any status) and `_final_error` (the error
    for a status that retrying cannot fix), and use `call` for other requests."""

    def __init__(self, cfg: HttpCommon, name: str) -> None:
        super().__init__()
        self.name = name  # "s3 backend bucket b at host:port", for messages
        self.timeout = float(cfg.timeout or DEFAULT_TIMEOUT)
        self.connect_timeout = float(cfg.connect_timeout or DEFAULT_TIMEOUT)
        self.retry_limit = max(0, cfg.retry_limit)
        if cfg.proxy.url:
            log.warning("%s: proxy %s is not supported, connecting directly", name, cfg.proxy.url)
        self.transport = GuardedTransport(ssl_context(cfg.skip_verify, cfg.ca_cert_files))
        self.breaker = CircuitBreaker(name)
        self._closed = threading.Event()
        self._guards: set[RequestGuard] = set()
        self._guards_lock = threading.Lock()
        self._warned_range = False

    # -- hooks ----------------------------------------------------------------------------

    def _open_range(self, blob_id: str, offset: int, size: int) -> httpx.Response:
        raise NotImplementedError

    def _final_error(
        self, response: httpx.Response, body: bytes, blob_id: str, what: str
    ) -> StorageError:
        """The error for a status retrying cannot fix; `body`: the start of the reply's."""
        return StorageError(f"{self.name}: {what}: {_status_text(response)}")

    # -- reads ------------------------------------------------------------------------------

    def _read(self, blob_id: str, offset: int, size: int) -> bytes:
        what = f"blob {blob_id} range [{offset}, +{size})"
        return self.call(what, lambda: self._read_once(blob_id, offset, size, what))

    def _read_once(self, blob_id: str, offset: int, size: int, what: str) -> bytes:
        response = self._open_range(blob_id, offset, size)
        try:
            status = response.status_code
            if status in (200, 206):
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("", "identity"):
                    raise StorageError(
                        f"{self.name}: {what}: server sent Content-Encoding {encoding!r} "
                        "although asked for identity"
                    )
            if status == 206:
                self._check_content_range(response, offset, size, what)
                return _body_range(response, 0, size)
            if status == 200:
                if not self._warned_range:
                    self._warned_range = True
                    log.warning(
                        "%s ignores Range requests (200 with the whole blob); "
                        "streaming past the bytes before each range",
                        self.name,
                    )
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) < offset + size:
                    raise StorageError(f"{self.name}: {what}: the blob has only {length} bytes")
                return _body_range(response, offset, size)
            if status == 429 or status >= 500:
                raise Transient(
                    _status_text(response), _retry_after(response.headers.get("retry-after"))
                )
            raise self._final_error(response, error_body(response), blob_id, what)
        finally:
            response.close()

    def _check_content_range(
        self, response: httpx.Response, offset: int, size: int, what: str
    ) -> None:
        served = response.headers.get("content-range", "")
        want = f"bytes {offset}-{offset + size - 1}/"
        if served and not served.startswith(want):
            total = served.rpartition("/")[2]
            if total.isdigit() and int(total) < offset + size:
                raise StorageError(f"{self.name}: {what}: the blob has only {total} bytes")
            raise Transient(f"server answered range {served!r}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) != size:
            raise Transient(f"Content-Length {length} for a range of {size} bytes")

    # -- the retry loop -----------------------------------------------------------------------

    def call(self, what: str, attempt: Callable[[], T]) -> T:
        """Run `attempt` under the rules above; it raises `Transient` for a failure worth
        retrying, a StorageError for a final one; httpx transport errors are transient."""
        start = time.monotonic()
        budget_end = start + (self.retry_limit + 1) * self.timeout
        tries = 0
        while True:
            if self._closed.is_set():
                raise StorageError(f"{self.name}: {what}: backend closed")
            refusal = self.breaker.refusal()
            if refusal is not None:
                log.debug("%s: %s: %s", self.name, what, refusal)
                raise StorageError(f"{what}: {refusal}")
            tries += 1
            retry_after: float | None = None
            try:
                with self._guard() as guard:
                    try:
                        result = attempt()
                    except httpx.TransportError as exc:
                        raise Transient(_transport_text(exc, guard)) from exc
            except Transient as exc:
                cause, retry_after = exc.cause, exc.retry_after
                self.breaker.record(False, cause)
            except StorageError:
                self.breaker.record(True)  # the server answered: it is up
                raise
            except BaseException:
                self.breaker.record(True)
                raise
            else:
                self.breaker.record(True)
                return result
            if self._closed.is_set():
                raise StorageError(f"{self.name}: {what}: backend closed")
            if tries > self.retry_limit:
                self._give_up(what, cause, tries)
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (tries - 1)) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = retry_after
            if time.monotonic() + delay >= budget_end:
                if retry_after is not None:
                    cause += f"; the server asks to retry after {retry_after:.0f} s, past the read's deadline"
                self._give_up(what, cause, tries)
            log.warning(
                "%s: %s: %s; retry %d/%d in %.1f s",
                self.name,
                what,
                cause,
                tries,
                self.retry_limit,
                delay,
            )
            if self._closed.wait(delay):
                raise StorageError(f"{self.name}: {what}: backend closed")

    def _give_up(self, what: str, cause: str, tries: int) -> None:
        log.warning(
            "%s: %s failed after %d attempt%s: %s",
            self.name,
            what,
            tries,
            "" if tries == 1 else "s",
            cause,
        )
        raise StorageError(f"{self.name}: {what}: {cause}")

    @contextmanager
    def _guard(self) -> Iterator[RequestGuard]:
        guard = RequestGuard(self.timeout, self.connect_timeout)
        with self._guards_lock:
            self._guards.add(guard)
        try:
            with guarded(guard):
                yield guard
        finally:
            with self._guards_lock:
                self._guards.discard(guard)

    def close(self) -> None:
        """Abort every request in flight and release the connections."""
        self._closed.set()
        with self._guards_lock:
            guards = list(self._guards)
        for g in guards:
            g.abort("backend closed")
        self.transport.close()


def _body_range(response: httpx.Response, skip: int, size: int) -> bytes:
    """`size` bytes of the body after the first `skip`; reads no further than needed."""
    data = take_range(response.iter_raw(), skip, size)
    if len(data) < size:
        raise Transient(f"short body: {len(data)} of {size} bytes")
    return data


def _status_text(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


def error_body(response: httpx.Response) -> bytes:
    """At most ERROR_BODY_MAX bytes of an error reply's body (never raises)."""
    buf = bytearray()
    try:
        for piece in response.iter_raw():
            buf += piece
            if len(buf) >= ERROR_BODY_MAX:
                break
    except httpx.HTTPError:
        pass
    return bytes(buf[:ERROR_BODY_MAX])


def _transport_text(exc: httpx.TransportError, guard: RequestGuard) -> str:
    if guard.aborted:
        return f"request aborted ({guard.reason})"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({text})"
    return f"{type(exc).__name__}: {text}"


def _retry_after(value: str | None) -> float | None:
    return parse_retry_after(value) if value else None
