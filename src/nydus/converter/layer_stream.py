"""A source layer as an uncompressed tar stream, in one pass: the compressed blob arrives
piece by piece from the registry (or from the copy an earlier run left in the work dir),
is written to that copy as it comes, and is decoded on its own thread (gzip with the
fastest decoder at hand, zstd, or none) into a bounded queue the tar reader drains. The
registry client checks the blob's digest at the end of the stream; `close()` waits for that
and raises what the feeding thread met, so a bad download never yields a blob silently."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Self

from nydus.errors import NydusError
from nydus.utils.inflate import gunzip_pieces

__all__ = ["LayerStream"]

log = logging.getLogger("nydus.converter")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_DONE = object()


class LayerStream:
    """`read(n)` gives the layer's tar bytes; use as a context manager."""

    def __init__(self, pieces: Iterable[bytes], cache_path: str | None, what: str) -> None:
        self.what = what
        self._pieces = pieces
        self._cache_path = cache_path
        self._queue: queue.Queue[object] = queue.Queue(maxsize=32)
        self._buf = memoryview(b"")
        self._eof = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self.compressed_bytes = 0
        self._thread = threading.Thread(target=self._feed, name="layer-decode", daemon=True)
        self._thread.start()

    # ---- the feeding thread ------------------------------------------------------------
    def _raw(self) -> Iterator[bytes]:
        tmp = self._cache_path + ".part" if self._cache_path else None
        out = open(tmp, "wb") if tmp else None  # noqa: SIM115 - closed below
        try:
            for piece in self._pieces:
                if self._stop.is_set():
                    raise _Stopped
                if out is not None:
                    out.write(piece)
                self.compressed_bytes += len(piece)
                yield piece
            if out is not None:
                out.close()
                os.replace(tmp, self._cache_path)  # type: ignore[arg-type]
                out = None
        finally:
            if out is not None:
                out.close()
                os.unlink(tmp)  # type: ignore[arg-type]

    def _feed(self) -> None:
        try:
            raw = self._raw()
            head = b""
            for piece in raw:
                head += piece
                if len(head) >= 4:
                    break
            rest = _chain(head, raw)
            if head.startswith(_GZIP_MAGIC):
                decoded: Iterable[bytes] = gunzip_pieces(rest)
            elif head.startswith(_ZSTD_MAGIC):
                decoded = _unzstd(rest)
            else:
                decoded = rest
            for data in decoded:
                self._put(data)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            self._error = exc
        self._put(_DONE)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    # ---- the reader's side --------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n
        while want != 0:
            if not self._buf:
                if self._eof:
                    break
                item = self._queue.get()
                if item is _DONE:
                    self._eof = True
                    if self._error is not None:
                        raise _wrap(self._error, self.what)
                    break
                self._buf = memoryview(item)  # type: ignore[arg-type]
            take = len(self._buf) if want < 0 else min(want, len(self._buf))
            parts.append(bytes(self._buf[:take]))
            self._buf = self._buf[take:]
            if want > 0:
                want -= take
        return b"".join(parts)

    def finish(self) -> None:
        """Read to the end (the digest check runs there) and raise any error met."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Stopped(Exception):
    pass


def _wrap(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, NydusError):
        return exc
    if isinstance(exc, OSError):
        return NydusError(f"{what}: {exc.strerror or exc}")
    return NydusError(f"{what}: {exc}")


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _unzstd(pieces: Iterable[bytes]) -> Iterator[bytes]:
    import zstandard

    d = zstandard.ZstdDecompressor().decompressobj()
    for data in pieces:
        out = d.decompress(data)
        if out:
            yield out
