"""Read amplification (`amplify_io` / `rafs.batch_size`): a read also fetches the chunks
that follow in the blob, within the batch size, into the caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nydus.errors import DigestMismatch
from nydus.format.rafs import walk
from nydus.storage import ChunkDevice
from tests.helpers.layers import F
from tests.image_factory import build_image
from tests.storage.test_device import SlowBackend


@pytest.fixture()
def image(tmp_path: Path):
    files = [F(f"f{i}", os.urandom(20000) + bytes([i])) for i in range(8)]
    img = build_image(tmp_path / "img", files, chunk_size=0x100000)
    sb = img.open()
    inos = {p: i for p, i in walk(sb) if p != b"/"}
    return sb, img.blob_dir, img.blob_id, inos, img.files


def _read(dev: ChunkDevice, sb, ino: int) -> bytes:
    size = sb.attr(ino).size
    return dev.read(sb.chunks(ino), size, 0, size)


def test_a_read_fetches_the_following_chunks_once(image, tmp_path):
    sb, blobs, blob_id, files, src = image
    be = SlowBackend(blobs)
    dev = ChunkDevice(
        sb,
        be,
        readahead_chunks=0,
        validate=True,
        batch_size=64 << 10,
        cache_dir=str(_mk(tmp_path / "cache")),
    )
    dev.load()
    del be.calls[:]  # blob meta reads
    assert _read(dev, sb, files[b"/f0"]) == src[b"/f0"]
    assert len(be.calls) == 1
    # 20 KiB incompressible chunks: 64 KiB covers this chunk and the next two
    first = be.calls[0]
    assert first[1] == 0 and 3 * 20001 <= first[2] <= 64 << 10
    assert _read(dev, sb, files[b"/f1"]) == src[b"/f1"]
    assert _read(dev, sb, files[b"/f2"]) == src[b"/f2"]
    assert len(be.calls) == 1  # served from the amplified fetch
    assert _read(dev, sb, files[b"/f3"]) == src[b"/f3"]
    assert len(be.calls) == 2


def test_no_amplification_within_one_chunk_of_batch(image):
    sb, blobs, _blob_id, files, src = image
    be = SlowBackend(blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=0, batch_size=4096)
    dev.load()
    del be.calls[:]
    for name in (b"/f0", b"/f1"):
        assert _read(dev, sb, files[name]) == src[name]
    assert len(be.calls) == 2


def test_a_bad_amplified_chunk_fails_only_its_own_reads(image, tmp_path):
    sb, blobs, blob_id, files, src = image
    be = SlowBackend(blobs)
    f1 = sb.chunks(files[b"/f1"])[0]
    be.flip = f1.compressed_offset + 10  # corrupt the chunk of f1 only
    dev = ChunkDevice(
        sb,
        be,
        readahead_chunks=0,
        validate=True,
        batch_size=64 << 10,
        cache_dir=str(_mk(tmp_path / "cache")),
    )
    assert _read(dev, sb, files[b"/f0"]) == src[b"/f0"]
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        _read(dev, sb, files[b"/f1"])
    assert dev.inflight_count() == 0
    be.flip = None
    assert _read(dev, sb, files[b"/f1"]) == src[b"/f1"]
    assert _read(dev, sb, files[b"/f2"]) == src[b"/f2"]


def _mk(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path
