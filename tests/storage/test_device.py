"""The chunk device without FUSE: single fetch per chunk under concurrency, merged reads,
digest checks, the blob cache files, and blob-meta loading from the golden blobs."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from nydus.config import BackendConfig, LocalFsConfig
from nydus.errors import ConfigError, DigestMismatch, FormatError, StorageError
from nydus.format.rafs import open_bootstrap, walk
from nydus.storage import BackendBase, ChunkDevice, ChunkMap, LocalFsBackend, create_backend
from nydus.storage.backend import size_bucket
from tests.golden import V6_BLOB_ID, golden_path

V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


class SlowBackend(BackendBase):
    """A localfs-like backend that records every read and can be slowed down or corrupted."""

    type_name = "slow"

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        super().__init__()
        self.root = root
        self.delay = delay
        self.calls: list[tuple[str, int, int]] = []
        self.flip: int | None = None
        self._lock = threading.Lock()

    def _read(self, blob_id: str, offset: int, size: int) -> bytes:
        with self._lock:
            self.calls.append((blob_id, offset, size))
        time.sleep(self.delay)
        data = bytearray((self.root / blob_id).read_bytes()[offset : offset + size])
        if self.flip is not None and offset <= self.flip < offset + size:
            data[self.flip - offset] ^= 0xFF
        return bytes(data)

    def size(self, blob_id: str) -> int:
        return (self.root / blob_id).stat().st_size


def _v5():
    sb = open_bootstrap(golden_path("upstream", "v5", "sha256-nocompress-repeatable").read_bytes())
    return sb, golden_path("upstream", "v5", "blobs")


def _v6():
    sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
    return sb, golden_path("upstream", "v6", "blobs")


def _ino(sb, path: bytes) -> int:
    return dict(walk(sb))[path]


def test_one_fetch_per_chunk_under_concurrency():
    sb, blobs = _v5()
    be = SlowBackend(blobs, delay=0.2)
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True, memory_cache=0)
    ino = _ino(sb, b"/normal-file-test/holefiles/head-hole-1")
    size = sb.attr(ino).size
    chunks = sb.chunks(ino)
    results: list[bytes] = []
    barrier = threading.Barrier(16)

    def reader() -> None:
        barrier.wait()
        results.append(dev.read(chunks, size, 1048576 - 100, 200))

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blob = (blobs / V5_BLOB).read_bytes()
    expect = b"".join(
        blob[c.compressed_offset : c.compressed_offset + c.compressed_size] for c in chunks
    )[1048576 - 100 : 1048576 + 100]
    assert results == [expect] * 16
    # this file is chunk 13 twice (a sparse file): one distinct chunk, one backend read
    assert {c.ci_index for c in chunks} == {13, 14}
    assert len(be.calls) == 1
    assert be.metrics.read_count == 1


def test_adjacent_chunks_are_merged_into_one_backend_read():
    sb, blobs = _v5()
    be = SlowBackend(blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True, batch_size=4 << 20)
    # the layer.tar of the busybox fixture spans chunks 6 and 7, adjacent in the blob
    ino = _ino(
        sb,
        b"/normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475/layer.tar",
    )
    a = sb.attr(ino)
    chunks = sb.chunks(ino)
    assert [c.ci_index for c in chunks] == [6, 7]
    data = dev.read(chunks, a.size, 0, a.size)
    assert len(data) == a.size
    assert be.calls == [
        (
            V5_BLOB,
            chunks[0].compressed_offset,
            chunks[0].compressed_size + chunks[1].compressed_size,
        )
    ]
    # the merged read is capped by the batch size (amplify_io): 1 MiB splits them again
    be2 = SlowBackend(blobs)
    dev2 = ChunkDevice(sb, be2, readahead_chunks=0, batch_size=1 << 20)
    assert dev2.read(chunks, a.size, 0, a.size) == data
    assert len(be2.calls) == 2


def test_digest_mismatch_raises_and_is_not_cached(tmp_path):
    sb, blobs = _v5()
    be = SlowBackend(blobs)
    be.flip = 5  # inside chunk 0 (/hardlink-test/foo)
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True, cache_dir=str(tmp_path))
    dev.load()
    ino = _ino(sb, b"/hardlink-test/foo")
    chunks = sb.chunks(ino)
    with pytest.raises(DigestMismatch, match=f"blob {V5_BLOB} chunk 0: digest mismatch") as exc:
        dev.read(chunks, 944, 0, 944)
    assert exc.value.errno == 5
    assert not dev.caches[0].map.is_ready(0)
    with pytest.raises(DigestMismatch):  # asked again: fetched again, fails again
        dev.read(chunks, 944, 0, 944)
    assert len(be.calls) == 2
    be.flip = None
    good = dev.read(chunks, 944, 0, 944)
    assert hashlib.md5(good).hexdigest() == "a292e7c6b19c3566a7bbee6a7da632ab"
    assert dev.caches[0].map.is_ready(0)
    assert dev.inflight_count() == 0


def test_without_validation_corruption_passes_through():
    sb, blobs = _v5()
    be = SlowBackend(blobs)
    be.flip = 5
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=False)
    data = dev.read(sb.chunks(_ino(sb, b"/hardlink-test/foo")), 944, 0, 944)
    assert data[5] == (blobs / V5_BLOB).read_bytes()[5] ^ 0xFF


def test_corrupt_compressed_chunk_is_storage_error():
    sb, blobs = _v6()
    be = SlowBackend(blobs)
    be.flip = 100
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True)
    ino = _ino(sb, b"/lib.rs")
    with pytest.raises(StorageError, match=f"blob {V6_BLOB_ID} chunk 0"):
        dev.read(sb.chunks(ino), 16931, 0, 4096)
    ino2 = _ino(sb, b"/sync_io.rs")
    assert (
        hashlib.sha256(dev.read(sb.chunks(ino2), 13400, 0, 13400)).hexdigest()
        == "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"
    )


def test_v6_meta_loading_and_cache_files(tmp_path):
    sb, blobs = _v6()
    be = SlowBackend(blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True, cache_dir=str(tmp_path))
    dev.load()
    # CI array + header, ToC, digest array: the three reads of the blob meta path
    assert be.calls == [
        (V6_BLOB_ID, 8314, 32 + 4096),
        (V6_BLOB_ID, 14554 - 1024, 1024),
        (V6_BLOB_ID, 12954, 64),
    ]
    meta = dev.meta(0)
    assert [
        (c.uncompressed_offset, c.uncompressed_size, c.compressed_offset, c.compressed_size)
        for c in meta.chunks
    ] == [(0, 16931, 0, 4828), (20480, 13400, 4828, 2974)]
    assert (
        meta.chunks[0].digest.hex()
        == "f7e2735f1c6ae9cde91e537416b09d8bb71b306a421d19cc1012a51f93a7fe69"
    )
    assert (
        meta.chunks[1].digest.hex()
        == "812465bcc9e88393598311dc5fc93abaeccef0185bcd99f9701d17ebdf9adc3f"
    )
    dev.close()
    # a second device on the same cache dir reads no metadata from the backend
    be2 = SlowBackend(blobs)
    dev2 = ChunkDevice(sb, be2, readahead_chunks=0, validate=True, cache_dir=str(tmp_path))
    dev2.load()
    assert be2.calls == []
    assert dev2.meta(0).chunks == meta.chunks


def test_v6_digests_from_chunk_table_when_blob_has_none(tmp_path):
    """Without a usable blob.digest section the bootstrap's chunk table provides digests."""
    from dataclasses import replace

    from nydus.format.constants import BlobFeatures

    sb, blobs = _v6()
    blob = sb.blobs[0]
    sb.blobs[0] = replace(blob, features=blob.features & ~BlobFeatures.INLINED_CHUNK_DIGEST)
    try:
        be = SlowBackend(blobs)
        dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True)
        dev.load()
        assert len(be.calls) == 1  # only the CI array
        assert dev.meta(0).chunks[1].digest.hex().startswith("812465bc")
    finally:
        sb.blobs[0] = blob


def test_ci_header_mismatch_is_format_error(tmp_path):
    from dataclasses import replace

    sb, blobs = _v6()
    blob = sb.blobs[0]
    sb.blobs[0] = replace(blob, ci_offset=blob.ci_offset + 16)
    try:
        dev = ChunkDevice(sb, SlowBackend(blobs), readahead_chunks=0)
        with pytest.raises(FormatError, match="CI header|bad magic"):
            dev.load()
    finally:
        sb.blobs[0] = blob


def test_chunk_map_persists_and_matches_upstream_layout(tmp_path):
    path = tmp_path / "x.blob.data.chunk_map"
    m = ChunkMap(str(path), 10)
    for i in (0, 3, 9):
        m.set_ready(i)
    m.close()
    raw = path.read_bytes()
    assert len(raw) == 4096 + 2
    assert raw[:12] == bytes.fromhex("50414d420100000050414d43")
    assert raw[12:16] == b"\0\0\0\0"  # not all ready
    assert raw[4096] == 0b1001_0000 and raw[4097] == 0b0100_0000
    m2 = ChunkMap(str(path), 10)
    assert [i for i in range(10) if m2.is_ready(i)] == [0, 3, 9]
    for i in range(10):
        m2.set_ready(i)
    assert m2.all_ready
    m2.close()
    assert path.read_bytes()[12:16] == bytes.fromhex("50414d4d")  # all-ready marker
    m3 = ChunkMap(str(path), 10)
    m3.clear(3)
    assert not m3.is_ready(3) and m3.is_ready(4) and not m3.all_ready
    m3.close()
    # a map of the wrong size is reset, not trusted
    m4 = ChunkMap(str(path), 20)
    assert not any(m4.is_ready(i) for i in range(20))
    m4.close()


def test_localfs_backend(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LocalFsBackend(dir=str(tmp_path / "none"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "blob1").write_bytes(b"")  # empty: falls through to alt_dirs
    (tmp_path / "b" / "blob1").write_bytes(b"0123456789")
    be = LocalFsBackend(dir=str(tmp_path / "a"), alt_dirs=(str(tmp_path / "b"),))
    assert be.read("blob1", 2, 3) == b"234"
    assert be.size("blob1") == 10
    with pytest.raises(StorageError, match="short read"):
        be.read("blob1", 8, 5)
    with pytest.raises(StorageError, match="cannot open blob nope"):
        be.read("nope", 0, 1)
    with pytest.raises(StorageError, match="invalid blob id"):
        be.read("../b/blob1", 0, 1)
    assert be.metrics.read_count == 1 and be.metrics.read_errors == 3
    assert be.metrics.read_amount_total == 3
    single = create_backend(
        BackendConfig("localfs", LocalFsConfig(blob_file=str(tmp_path / "b" / "blob1")))
    )
    assert single.read("anything-at-all", 0, 4) == b"0123"
    be.close()


def test_backend_registry():
    with pytest.raises(ConfigError, match="unknown backend type 'ftp'"):
        create_backend(BackendConfig("ftp"))
    with pytest.raises(ConfigError, match="not supported yet"):
        create_backend(BackendConfig("localdisk"))
    assert [size_bucket(n) for n in (1, 1024, 4096, 65536, 131072, 600000, 1 << 20)] == [
        0,
        1,
        2,
        4,
        5,
        6,
        7,
    ]


def test_prefetch_fills_the_cache(tmp_path):
    sb, blobs = _v5()
    be = SlowBackend(blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=0, cache_dir=str(tmp_path))
    dev.load()
    refs = [c for p, i in walk(sb) if sb.attr(i).is_reg for c in sb.chunks(i)]
    total = dev.prefetch(refs)
    assert total == sum({c.ci_index: c.uncompressed_size for c in refs}.values())
    snap = dev.cache_snapshot()
    assert snap["data_all_ready"] is True
    assert snap["prefetch_data_amount"] == 3508766
    assert (tmp_path / f"{V5_BLOB}.blob.data").read_bytes() == (blobs / V5_BLOB).read_bytes()
    assert os.path.exists(tmp_path / f"{V5_BLOB}.blob.data.chunk_map")


def test_sequential_reads_fetch_the_next_chunks_in_the_background():
    sb, blobs = _v5()
    be = SlowBackend(blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=2)
    ino = _ino(sb, b"/normal-file-test/holefiles/head-hole-1")
    chunks = sb.chunks(ino)  # chunk 13, 13, 14
    dev.read(chunks, 2097159, 0, 4096)
    deadline = time.monotonic() + 10
    while len(be.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    offsets = sorted(off for _b, off, _s in be.calls)
    assert offsets == sorted({c.compressed_offset for c in chunks})
    calls = len(be.calls)
    assert (
        dev.read(chunks, 2097159, 2 << 20, 7)
        == (blobs / V5_BLOB).read_bytes()[
            chunks[2].compressed_offset : chunks[2].compressed_offset + 7
        ]
    )
    assert len(be.calls) == calls  # already fetched ahead
    dev.close()


def test_random_reads_do_not_read_ahead():
    sb, blobs = _v5()
    be = SlowBackend(blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=2, memory_cache=0)
    ino = _ino(sb, b"/normal-file-test/holefiles/head-hole-3")
    chunks = sb.chunks(ino)
    assert [c.ci_index for c in chunks] == [13, 13, 16]
    size = sb.attr(ino).size
    dev.read(chunks, size, 1 << 20, 10)  # chunk 1 without chunk 0 before it: no read-ahead
    time.sleep(0.2)
    assert len(be.calls) == 1
    dev.close()
