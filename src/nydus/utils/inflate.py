"""Streaming gzip decoding with the fastest decoder at hand: ISA-L's (the `isal` package)
where it is installed, else zlib. Concatenated gzip members decode as one stream."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nydus.errors import FormatError

__all__ = ["DECODER", "GzipError", "gunzip_pieces"]

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


class GzipError(FormatError):
    """Bytes that are no valid gzip stream: a bad header, CRC or length, a member cut short,
    or data after the last member that is neither another member nor zero padding."""


_MAGIC = b"\x1f\x8b"


def gunzip_pieces(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Decode the gzip stream arriving as `pieces` into uncompressed pieces.

    Every member's trailer is checked (CRC-32 and length, by the decoder); members may
    follow one another and zero bytes may pad the end (as gzip(1) accepts), wherever the
    pieces split them; anything else after a member is an error, as is a stream that ends
    inside a member. Read it to the end: the last checks run there."""
    d: Any = None  # the decoder of the member under way; None between members
    gap = b""  # bytes after a member, not yet known to be padding or a new member
    members = 0
    padded = False  # zero bytes met after a member: only more zeros may follow
    try:
        for data in pieces:
            while data:
                if d is None:
                    gap += data
                    data = b""
                    rest = gap.lstrip(b"\0")
                    padded = padded or len(rest) < len(gap)
                    if not rest:
                        gap = b""  # zero padding so far
                        continue
                    if len(rest) < 2:
                        gap = rest  # too short to tell: wait for more
                        continue
                    if rest[:2] != _MAGIC:
                        raise GzipError(
                            "trailing data after the gzip stream"
                            if members
                            else "not gzip data (bad magic)"
                        )
                    if padded:
                        raise GzipError("trailing data after the gzip stream (zeros, then more)")
                    d, data, gap = _decompressobj(_GZIP), rest, b""
                out = d.decompress(data)
                if out:
                    yield out
                if d.eof:
                    data = d.unused_data
                    d = None
                    members += 1
                else:
                    data = b""
        if d is not None:
            out = d.flush()
            if out:
                yield out
    except _errors as exc:
        raise GzipError(f"invalid gzip data: {exc}") from None
    if d is not None and not d.eof:
        raise GzipError("gzip stream ends early (truncated)")
    if gap.strip(b"\0"):
        raise GzipError("trailing data after the gzip stream")
