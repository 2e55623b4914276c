"""Streaming gzip decoding with the fastest decoder at hand: ISA-L's (the `isal` package)
where it is installed, else zlib. Concatenated gzip members decode as one stream."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["DECODER", "gunzip_pieces"]

_decompressobj: Callable[[int], Any]
_errors: tuple[type[BaseException], ...]
try:
    from isal import isal_zlib

    _decompressobj = isal_zlib.decompressobj
    _errors = (isal_zlib.error, zlib.error)  # type: ignore[assignment]
    DECODER = "isal"
except ImportError:  # pragma: no cover - depends on the machine
    _decompressobj = zlib.decompressobj
    _errors = (zlib.error,)
    DECODER = "zlib"

_GZIP = 16 + zlib.MAX_WBITS


class GzipError(ValueError):
    pass


def gunzip_pieces(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Decode the gzip stream arriving as `pieces` into uncompressed pieces."""
    d = _decompressobj(_GZIP)
    started = False
    try:
        for data in pieces:
            while data:
                started = True
                out = d.decompress(data)
                if out:
                    yield out
                if d.eof:
                    data = d.unused_data
                    d = _decompressobj(_GZIP)
                    started = False
                    if not data.strip(b"\0"):  # zero padding after a member, as gzip allows
                        data = b""
                else:
                    data = b""
        out = d.flush()
        if out:
            yield out
    except _errors as exc:
        raise GzipError(f"invalid gzip data: {exc}") from None
    if started and not d.eof:
        raise GzipError("gzip stream ends early (truncated)")
