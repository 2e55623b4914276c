"""Byte ranges: cutting one out of a stream of pieces (an HTTP body that ignored Range), and
grouping many into the few large reads that cover them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["merge_adjacent", "take_range"]

T = TypeVar("T")


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


def merge_adjacent(
    items: Iterable[T], span: Callable[[T], tuple[int, int]], limit: int, gap: int = 0
) -> list[list[T]]:
    """Items sorted by where they start, in groups each read with one request: an item joins
    the group before it when it starts at most `gap` bytes after the group's end and the
    group then spans at most `limit` bytes (an item larger than `limit` is a group alone)."""
    ordered = sorted(items, key=lambda it: span(it)[0])
    groups: list[list[T]] = []
    start = end = 0
    for it in ordered:
        lo, hi = span(it)
        if groups and lo <= end + gap and max(end, hi) - start <= limit:
            groups[-1].append(it)
            end = max(end, hi)
        else:
            groups.append([it])
            start, end = lo, hi
    return groups
