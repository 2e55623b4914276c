"""Cutting a byte range out of a stream of pieces (an HTTP body that ignored Range)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["take_range"]


def take_range(pieces: Iterable[bytes], skip: int, size: int) -> bytes:
    """The `size` bytes after the first `skip` of the concatenated `pieces`, reading no
    further than needed and holding no more than the range; shorter if the pieces end."""
    buf = bytearray()
    for piece in pieces:
        if skip:
            if len(piece) <= skip:
                skip -= len(piece)
                continue
            piece, skip = piece[skip:], 0
        buf += piece[: size - len(buf)]
        if len(buf) >= size:
            break
    return bytes(buf)
