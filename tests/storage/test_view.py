"""The blob's uncompressed view: what the kernel's EROFS reads as a blob device. Every
file chunk sits at its chunk-index block address in the view; gaps read as zeros; bad
chunk layouts fail every read of that blob."""

from __future__ import annotations

import os
import subprocess

import pytest

from nydus.errors import DigestMismatch, FormatError
from nydus.format.rafs import open_bootstrap, walk
from nydus.storage import ChunkDevice, LocalFsBackend
from nydus.storage.blobmeta import ChunkDesc
from nydus.storage.view import BlobIndex, BlobViews
from tests.golden import golden_path

BLOCK = 4096


def _desc(i: int, off: int, size: int) -> ChunkDesc:
    return ChunkDesc(i, i * 100, 100, off, size, True)


def test_index_sorts_and_finds_spans():
    idx = BlobIndex.build(0, "b", 5 * BLOCK, [_desc(1, 2 * BLOCK, 100), _desc(0, 0, BLOCK)])
    assert idx.starts == [0, 2 * BLOCK]
    assert idx.span(0, 10) == (0, 1)
    assert idx.span(BLOCK, BLOCK + 10) == (1, 1)  # in the hole after chunk 0
    assert idx.span(10, 2 * BLOCK + 1) == (0, 2)
    assert idx.span(2 * BLOCK + 100, 3 * BLOCK) == (2, 2)  # after the last chunk


@pytest.mark.parametrize(
    ("descs", "message"),
    [
        (
            [_desc(0, 0, BLOCK), _desc(1, BLOCK + 512, 100)],
            r"not 4 KiB-aligned \(use --fs-driver fuse\)",
        ),
        ([_desc(0, 0, 2 * BLOCK), _desc(1, BLOCK, 100)], "overlaps the chunk before it"),
        ([_desc(0, 4 * BLOCK, 2 * BLOCK)], "beyond the blob's uncompressed size"),
    ],
)
def test_index_refuses_layouts_the_kernel_cannot_read(descs, message):
    with pytest.raises(FormatError, match=message):
        BlobIndex.build(0, "b", 5 * BLOCK, descs)


def _image(tmp_path, nydus_image, chunk_size: str = "0x1000"):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "small").write_bytes(b"hello\n")
    (src / "d" / "big").write_bytes(os.urandom(3 * 4096 + 123))
    (src / "d" / "same").write_bytes((src / "d" / "big").read_bytes())  # deduplicated
    (src / "empty").write_bytes(b"")
    (src / "zeros").write_bytes(bytes(10000))
    boot, blobs = tmp_path / "boot", tmp_path / "blobs"
    blobs.mkdir()
    subprocess.run(
        [
            nydus_image,
            "create",
            "--bootstrap",
            str(boot),
            "--blob-dir",
            str(blobs),
            "--chunk-size",
            chunk_size,
            "--log-level",
            "warn",
            str(src),
        ],
        check=True,
    )
    return open_bootstrap(boot.read_bytes()), blobs, src


def _check_files_at_block_addresses(sb, dev, views) -> int:
    """Every chunk of every file: its bytes in the view at the kernel's block address."""
    checked = 0
    for path, ino in walk(sb):
        a = sb.attr(ino)
        if not a.is_reg or not a.size:
            continue
        data = dev.read(sb.chunks(ino), a.size, 0, a.size)
        for i, addr in enumerate(sb.chunk_addrs(ino)):
            piece = data[i * sb.chunk_size : (i + 1) * sb.chunk_size]
            desc = dev.meta(addr.blob_index).chunks[addr.ci_index]
            assert addr.blkaddr * BLOCK == desc.uncompressed_offset, path
            got = views.read(addr.blob_index, addr.blkaddr * BLOCK, len(piece))
            assert got == piece, path
            checked += 1
    return checked


def test_our_images_chunks_sit_at_their_block_addresses(tmp_path, nydus_image):
    sb, blobs, _src = _image(tmp_path, nydus_image)
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(blobs)), validate=True)
    views = BlobViews(dev)
    assert _check_files_at_block_addresses(sb, dev, views) >= 5
    size = views.size(0)
    whole = views.read(0, 0, size + 100)
    assert len(whole) == size == sb.blobs[0].uncompressed_size
    # reads across chunk boundaries and at odd offsets equal slices of the whole view
    for off, n in [(0, 1), (4095, 2), (5000, 9000), (size - 3, 10), (size, 5)]:
        assert views.read(0, off, n) == whole[off : off + n]
    assert views.read_memory(0, 0, 4096) == whole[:4096]  # now held in memory


@pytest.mark.golden
def test_upstream_golden_v6_chunks_sit_at_their_block_addresses():
    sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(golden_path("upstream", "v6", "blobs"))))
    views = BlobViews(dev)
    assert _check_files_at_block_addresses(sb, dev, views) == 2
    # the gap after the last chunk, up to the blob's size, reads as zeros
    last = max(d.uncompressed_offset + d.uncompressed_size for d in dev.meta(0).chunks)
    assert views.read(0, last, views.size(0) - last) == bytes(views.size(0) - last)


def test_blob_meta_is_loaded_on_first_read_and_a_bad_chunk_fails(tmp_path, nydus_image):
    sb, blobs, _src = _image(tmp_path, nydus_image)
    blob = blobs / sb.blobs[0].blob_id
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(blobs)), validate=True)
    BlobViews(dev)
    assert dev.metas == {}  # nothing loaded before the first read
    meta = dev.meta(0)
    desc = max(meta.chunks, key=lambda d: d.compressed_size)
    raw = bytearray(blob.read_bytes())
    raw[desc.compressed_offset + desc.compressed_size // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    dev2 = ChunkDevice(sb, LocalFsBackend(dir=str(blobs)), validate=True)
    views2 = BlobViews(dev2)
    with pytest.raises((DigestMismatch, FormatError)):
        views2.read(0, desc.uncompressed_offset, 10)
    # other chunks still read
    other = next(d for d in meta.chunks if d.index != desc.index)
    assert len(views2.read(0, other.uncompressed_offset, other.uncompressed_size)) == (
        other.uncompressed_size
    )
