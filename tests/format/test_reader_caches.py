"""The bootstrap readers' caches belong to each reader: a dropped reader (and so its
bootstrap buffer) is freed by reference counting, and two readers never share or evict each
other's cached records."""

from __future__ import annotations

import gc
import weakref

import pytest

from nydus.format.rafs import open_bootstrap, walk
from tests.golden import golden_path
from tests.image_factory import build_image

BOOTSTRAPS = {
    "v6": ("upstream", "v6", "bootstrap"),
    "v5": ("upstream", "v5", "sha256-nocompress-repeatable"),
}
KINDS = ["own-v6", *sorted(BOOTSTRAPS)]


def _bootstrap(kind: str, tmp_path) -> bytes:
    """Our own small v6 image (always there) or an upstream golden bootstrap."""
    if kind == "own-v6":
        return build_image(tmp_path).bootstrap.read_bytes()
    return golden_path(*BOOTSTRAPS[kind]).read_bytes()


def _exercise(sb) -> list[int]:
    """Fill every cache of a reader: records, attributes, directories, chunk table."""
    inos = [ino for _, ino in walk(sb)]
    for ino in inos:
        a = sb.attr(ino)
        if a.is_dir:
            for e in sb.readdir(ino):
                assert sb.lookup(ino, e.name) == e.ino
        elif a.is_reg:
            sb.chunks(ino)
    sb.chunk_table()
    return inos


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_reader_is_freed_without_gc(kind, tmp_path):
    buf = _bootstrap(kind, tmp_path)
    sb = open_bootstrap(buf)
    assert len(_exercise(sb)) >= 3  # root, a directory, a file at least
    ref = weakref.ref(sb)
    gc.disable()  # a reference cycle would keep it alive until a collection: rule that out
    try:
        del sb
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", KINDS)
def test_two_readers_keep_their_own_caches(kind, tmp_path):
    buf = _bootstrap(kind, tmp_path)
    one, two = open_bootstrap(buf), open_bootstrap(buf)
    inos = _exercise(one)
    table = one.chunk_table()
    assert table
    # alternate: a read of `two` between two reads of `one`, each hitting its own cache
    for _ in range(3):
        two_table = two.chunk_table()
        assert two_table == table and two_table is not table
        assert one.chunk_table() is table
    assert two.chunk_table() is two_table
    first = {ino: one.attr(ino) for ino in inos}
    for ino in inos:
        two_attr = two.attr(ino)
        assert two_attr == first[ino] and two_attr is not first[ino]
        assert one.attr(ino) is first[ino] and two.attr(ino) is two_attr
