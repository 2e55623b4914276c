"""The chunk device without FUSE: single fetch per chunk under concurrency, merged reads,
digest checks, the blob cache files, and blob-meta loading.

Each behaviour runs over upstream's golden images (``golden-*``) and over images of our own
(``own-*``, tests/image_factory.py) with the same chunk shapes; the latter need no golden set.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from nydus.config import BackendConfig, LocalFsConfig
from nydus.errors import ConfigError, DigestMismatch, FormatError, StorageError
from nydus.format.blobmeta import parse_toc
from nydus.format.constants import BlobFeatures
from nydus.format.rafs import open_bootstrap, walk
from nydus.storage import BackendBase, ChunkDevice, ChunkMap, LocalFsBackend, create_backend
from nydus.storage.backend import size_bucket
from tests.golden import V6_BLOB_ID, golden_path
from tests.image_factory import build_image

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


@dataclass
class Img:
    """An image and the files of it the tests use (same shapes in golden and own images)."""

    sb: Any
    blobs: Path
    blob_id: str
    chunk_size: int
    repeat: bytes  # chunks X, X, Y: one chunk twice, then another
    adjacent: bytes  # two chunks next to each other in the blob
    first: bytes  # a file that is chunk 0 of the blob (v5, raw) / stored compressed (v6)
    other: bytes  # a file in other chunks than `first`'s
    batch: int  # a batch size that amplifies no read beyond its own chunks
    source: dict[bytes, bytes] = field(default_factory=dict)  # contents, when known

    def ino(self, path: bytes) -> int:
        return dict(walk(self.sb))[path]

    def content(self, path: bytes) -> bytes:
        if path in self.source:
            return self.source[path]
        # golden v5 blobs are uncompressed: a file is its chunks' bytes
        blob = (self.blobs / self.blob_id).read_bytes()
        ino = self.ino(path)
        data = b"".join(
            blob[c.compressed_offset : c.compressed_offset + c.compressed_size]
            for c in self.sb.chunks(ino)
        )
        return data[: self.sb.attr(ino).size]


def _golden_v5() -> Img:
    sb = open_bootstrap(golden_path("upstream", "v5", "sha256-nocompress-repeatable").read_bytes())
    busybox = b"/normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475/layer.tar"
    return Img(
        sb,
        golden_path("upstream", "v5", "blobs"),
        V5_BLOB,
        0x100000,
        b"/normal-file-test/holefiles/head-hole-1",
        busybox,
        b"/hardlink-test/foo",
        busybox,
        1 << 20,  # v5 blobs have no CI array: no amplification
    )


def _golden_v6() -> Img:
    sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
    return Img(
        sb,
        golden_path("upstream", "v6", "blobs"),
        V6_BLOB_ID,
        0x100000,
        b"",
        b"",
        b"/lib.rs",
        b"/sync_io.rs",
        1 << 20,
    )


def _own(tmp_path_factory: pytest.TempPathFactory, compressor: str) -> Img:
    img = build_image(tmp_path_factory.mktemp(f"own-{compressor}"), compressor=compressor)
    return Img(
        img.open(),
        img.blob_dir,
        img.blob_id,
        img.chunk_size,
        b"/repeat.bin",
        b"/random.bin",
        b"/dir/f00" if compressor == "none" else b"/text.txt",
        b"/text.txt" if compressor == "none" else b"/random.bin",
        img.chunk_size,  # one chunk: v6 reads take the following chunks within the batch
        img.files,
    )


@pytest.fixture(scope="module")
def own_none(tmp_path_factory) -> Img:
    return _own(tmp_path_factory, "none")


@pytest.fixture(scope="module")
def own_zstd(tmp_path_factory) -> Img:
    return _own(tmp_path_factory, "zstd")


@pytest.fixture(params=[pytest.param("golden-v5", marks=pytest.mark.golden), "own-none"])
def raw(request) -> Img:
    """An image whose chunks are stored uncompressed."""
    return _golden_v5() if request.param == "golden-v5" else request.getfixturevalue("own_none")


@pytest.fixture(params=[pytest.param("golden-v6", marks=pytest.mark.golden), "own-zstd"])
def v6(request) -> Img:
    """A RAFS v6 image with compressed chunks, CI array, ToC and chunk digests in the blob."""
    return _golden_v6() if request.param == "golden-v6" else request.getfixturevalue("own_zstd")


def test_one_fetch_per_chunk_under_concurrency(raw):
    be = SlowBackend(raw.blobs, delay=0.2)
    dev = ChunkDevice(
        raw.sb, be, readahead_chunks=0, validate=True, memory_cache=0, batch_size=raw.batch
    )
    dev.load()
    del be.calls[:]  # blob meta reads (v6)
    be.metrics.read_count = 0
    ino = raw.ino(raw.repeat)
    size = raw.sb.attr(ino).size
    chunks = raw.sb.chunks(ino)
    results: list[bytes] = []
    barrier = threading.Barrier(16)
    cs = raw.chunk_size

    def reader() -> None:
        barrier.wait()
        results.append(dev.read(chunks, size, cs - 100, 200))

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [raw.content(raw.repeat)[cs - 100 : cs + 100]] * 16
    # the read spans chunks 0 and 1 of the file, the same blob chunk: one backend read
    assert len({c.ci_index for c in chunks}) == 2 and chunks[0].ci_index == chunks[1].ci_index
    assert len(be.calls) == 1
    assert be.metrics.read_count == 1


def test_adjacent_chunks_are_merged_into_one_backend_read(raw):
    ino = raw.ino(raw.adjacent)
    a = raw.sb.attr(ino)
    chunks = raw.sb.chunks(ino)
    assert len(chunks) == 2 and chunks[1].ci_index == chunks[0].ci_index + 1
    extent = chunks[0].compressed_size + chunks[1].compressed_size
    be = SlowBackend(raw.blobs)
    dev = ChunkDevice(raw.sb, be, readahead_chunks=0, validate=True, batch_size=extent)
    dev.load()
    # have the chunk after them at hand, so that a v6 read amplifies nothing (test_amplify.py)
    nxt = chunks[1].ci_index + 1
    for _p, i in walk(raw.sb):
        for c in raw.sb.chunks(i) if raw.sb.attr(i).is_reg else []:
            if c.ci_index == nxt:
                dev.read(raw.sb.chunks(i), raw.sb.attr(i).size, c.file_offset, 1)
    del be.calls[:]  # blob meta reads (v6), the chunk after
    data = dev.read(chunks, a.size, 0, a.size)
    assert data == raw.content(raw.adjacent)
    assert be.calls == [
        (
            raw.blob_id,
            chunks[0].compressed_offset,
            chunks[0].compressed_size + chunks[1].compressed_size,
        )
    ]
    # the merged read is capped by the batch size (amplify_io): one chunk splits them again
    be2 = SlowBackend(raw.blobs)
    dev2 = ChunkDevice(raw.sb, be2, readahead_chunks=0, batch_size=raw.chunk_size)
    dev2.load()
    del be2.calls[:]
    assert dev2.read(chunks, a.size, 0, a.size) == data
    assert len(be2.calls) == 2


def test_digest_mismatch_raises_and_is_not_cached(raw, tmp_path):
    be = SlowBackend(raw.blobs)
    ino = raw.ino(raw.first)
    chunks = raw.sb.chunks(ino)
    size = raw.sb.attr(ino).size
    assert chunks[0].ci_index == 0
    be.flip = chunks[0].compressed_offset + 5  # inside chunk 0
    dev = ChunkDevice(
        raw.sb, be, readahead_chunks=0, validate=True, cache_dir=str(tmp_path), batch_size=raw.batch
    )
    dev.load()
    del be.calls[:]  # blob meta reads (v6)
    with pytest.raises(DigestMismatch, match=f"blob {raw.blob_id} chunk 0: digest mismatch") as exc:
        dev.read(chunks, size, 0, size)
    assert exc.value.errno == 5
    assert not dev.caches[0].map.is_ready(0)
    with pytest.raises(DigestMismatch):  # asked again: fetched again, fails again
        dev.read(chunks, size, 0, size)
    assert len(be.calls) == 2
    be.flip = None
    good = dev.read(chunks, size, 0, size)
    assert good == raw.content(raw.first)
    if raw.first == b"/hardlink-test/foo":  # golden: the value upstream's image holds
        assert hashlib.md5(good).hexdigest() == "a292e7c6b19c3566a7bbee6a7da632ab"
    assert dev.caches[0].map.is_ready(0)
    assert dev.inflight_count() == 0


def _fill_cache_then_flip(img: Img, cache_dir: Path, path: bytes) -> tuple[list, int, int]:
    """Read `path` once without validation (the cache file fills), then flip a byte of its
    first chunk in the cache file; returns (chunks, size, flipped offset in the file)."""
    ino = img.ino(path)
    chunks, size = img.sb.chunks(ino), img.sb.attr(ino).size
    dev = ChunkDevice(img.sb, SlowBackend(img.blobs), readahead_chunks=0, cache_dir=str(cache_dir))
    dev.load()
    assert dev.read(chunks, size, 0, size) == img.content(path)
    desc = dev.meta(0).chunk(chunks[0])
    dev.close()
    data = cache_dir / f"{img.blob_id}.blob.data"
    with open(data, "r+b") as f:
        f.seek(desc.uncompressed_offset + 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return chunks, size, 3


def test_digest_validate_covers_the_cache_file_once_per_chunk(raw, tmp_path, monkeypatch, caplog):
    """A cache filled while validation was off, then a byte flipped in it: with `validate`
    (digest_validate) the chunk fails its digest, is dropped from the cache map and fetched
    again; each cached chunk is hashed once per device, not on every read."""
    chunks, size, _ = _fill_cache_then_flip(raw, tmp_path, raw.first)
    from nydus.utils.digest import Digester

    hashed: list[int] = []
    real = Digester.digest
    monkeypatch.setattr(Digester, "digest", lambda self, d: hashed.append(len(d)) or real(self, d))
    be = SlowBackend(raw.blobs)
    dev = ChunkDevice(
        raw.sb, be, readahead_chunks=0, validate=True, cache_dir=str(tmp_path), memory_cache=0
    )
    dev.load()
    del be.calls[:]
    hashed.clear()
    assert dev.read(chunks, size, 0, size) == raw.content(raw.first)
    assert "cached data fails its digest; refetching" in caplog.text
    assert [c[1] for c in be.calls] == [chunks[0].compressed_offset]  # only the bad chunk
    assert dev.caches[0].map.is_ready(chunks[0].ci_index)
    first = len(hashed)
    assert first == len({c.ci_index for c in chunks}) + 1  # each chunk, the bad one twice
    for _ in range(3):  # from the cache file again (no memory cache): no hashing, no fetch
        assert dev.read(chunks, size, 0, size) == raw.content(raw.first)
        assert dev.read(chunks, size, 1, 10) == raw.content(raw.first)[1:11]
    assert len(hashed) == first and len(be.calls) == 1
    dev.close()


def test_digest_validate_bad_cache_and_bad_backend_is_eio(raw, tmp_path):
    chunks, size, _ = _fill_cache_then_flip(raw, tmp_path, raw.first)
    be = SlowBackend(raw.blobs)
    be.flip = chunks[0].compressed_offset + 5
    dev = ChunkDevice(raw.sb, be, readahead_chunks=0, validate=True, cache_dir=str(tmp_path))
    dev.load()
    with pytest.raises(DigestMismatch) as exc:
        dev.read(chunks, size, 0, size)
    assert exc.value.errno == 5
    assert not dev.caches[0].map.is_ready(chunks[0].ci_index)
    dev.close()


def test_without_validation_corruption_passes_through(raw):
    be = SlowBackend(raw.blobs)
    ino = raw.ino(raw.first)
    c0 = raw.sb.chunks(ino)[0]
    be.flip = c0.compressed_offset + 5
    dev = ChunkDevice(raw.sb, be, readahead_chunks=0, validate=False)
    size = raw.sb.attr(ino).size
    data = dev.read(raw.sb.chunks(ino), size, 0, size)
    assert data[5] == raw.content(raw.first)[5] ^ 0xFF
    assert data[:5] + data[6:] == raw.content(raw.first)[:5] + raw.content(raw.first)[6:]


def test_corrupt_compressed_chunk_is_storage_error(v6):
    be = SlowBackend(v6.blobs)
    ino = v6.ino(v6.first)
    c0 = v6.sb.chunks(ino)[0]
    assert c0.compressed_size < c0.uncompressed_size  # stored compressed
    be.flip = c0.compressed_offset + min(100, c0.compressed_size // 2)
    dev = ChunkDevice(v6.sb, be, readahead_chunks=0, validate=True, batch_size=v6.batch)
    with pytest.raises(StorageError, match=f"blob {v6.blob_id} chunk {c0.ci_index}"):
        dev.read(v6.sb.chunks(ino), v6.sb.attr(ino).size, 0, 4096)
    ino2 = v6.ino(v6.other)
    size2 = v6.sb.attr(ino2).size
    got = dev.read(v6.sb.chunks(ino2), size2, 0, size2)
    if v6.source:
        assert got == v6.content(v6.other)
    else:  # golden: the sha256 of upstream's source file
        assert (
            hashlib.sha256(got).hexdigest()
            == "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"
        )


@pytest.mark.golden
def test_v6_meta_loading_and_cache_files(tmp_path):
    g = _golden_v6()
    sb, blobs = g.sb, g.blobs
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


def test_own_v6_meta_loading_and_cache_files(own_zstd, tmp_path):
    sb, blob = own_zstd.sb, own_zstd.sb.blobs[0]
    raw = (own_zstd.blobs / own_zstd.blob_id).read_bytes()
    toc = {e.name: e for e in parse_toc(raw[-blob.blob_toc_size :])}
    be = SlowBackend(own_zstd.blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True, cache_dir=str(tmp_path))
    dev.load()
    # CI array + header, ToC, digest array: the three reads of the blob meta path
    digests = toc["blob.digest"]
    assert be.calls == [
        (own_zstd.blob_id, blob.ci_offset, blob.ci_compressed_size + 4096),
        (own_zstd.blob_id, len(raw) - blob.blob_toc_size, blob.blob_toc_size),
        (own_zstd.blob_id, digests.compressed_offset, 32 * blob.chunk_count),
    ]
    meta = dev.meta(0)
    table = {r.index: r for r in sb.chunk_table()}
    assert len(meta.chunks) == blob.chunk_count == len(table)
    for i, c in enumerate(meta.chunks):
        r = table[i]
        assert (
            c.uncompressed_offset,
            c.uncompressed_size,
            c.compressed_offset,
            c.compressed_size,
        ) == (
            r.uncompressed_offset,
            r.uncompressed_size,
            r.compressed_offset,
            r.compressed_size,
        )
        assert c.digest == r.digest
    dev.close()
    # a second device on the same cache dir reads no metadata from the backend
    be2 = SlowBackend(own_zstd.blobs)
    dev2 = ChunkDevice(sb, be2, readahead_chunks=0, validate=True, cache_dir=str(tmp_path))
    dev2.load()
    assert be2.calls == []
    assert dev2.meta(0).chunks == meta.chunks


def test_v6_digests_from_chunk_table_when_blob_has_none(v6):
    """Without a usable blob.digest section the bootstrap's chunk table provides digests."""
    sb = v6.sb
    blob = sb.blobs[0]
    sb.blobs[0] = replace(blob, features=blob.features & ~BlobFeatures.INLINED_CHUNK_DIGEST)
    try:
        be = SlowBackend(v6.blobs)
        dev = ChunkDevice(sb, be, readahead_chunks=0, validate=True)
        dev.load()
        assert len(be.calls) == 1  # only the CI array
        table = {r.index: r.digest for r in sb.chunk_table()}
        assert [c.digest for c in dev.meta(0).chunks] == [table[i] for i in range(len(table))]
        if v6.blob_id == V6_BLOB_ID:  # golden: the value upstream's image holds
            assert dev.meta(0).chunks[1].digest.hex().startswith("812465bc")
    finally:
        sb.blobs[0] = blob


def test_ci_header_mismatch_is_format_error(v6):
    sb = v6.sb
    blob = sb.blobs[0]
    sb.blobs[0] = replace(blob, ci_offset=blob.ci_offset + 16)
    try:
        dev = ChunkDevice(sb, SlowBackend(v6.blobs), readahead_chunks=0)
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


def test_prefetch_fills_the_cache(raw, tmp_path):
    sb = raw.sb
    be = SlowBackend(raw.blobs)
    dev = ChunkDevice(sb, be, readahead_chunks=0, cache_dir=str(tmp_path))
    dev.load()
    refs = [c for p, i in walk(sb) if sb.attr(i).is_reg for c in sb.chunks(i)]
    distinct = {c.ci_index: c for c in refs}
    total = dev.prefetch(refs)
    assert total == sum(c.uncompressed_size for c in distinct.values())
    snap = dev.cache_snapshot()
    assert snap["data_all_ready"] is True
    assert snap["prefetch_data_amount"] == total
    if raw.blob_id == V5_BLOB:  # golden: the blob's uncompressed size
        assert total == 3508766
    # the cache file holds every chunk at its uncompressed offset
    cached = (tmp_path / f"{raw.blob_id}.blob.data").read_bytes()
    for p, i in walk(sb):
        if sb.attr(i).is_reg:
            data = b"".join(
                cached[c.uncompressed_offset : c.uncompressed_offset + c.uncompressed_size]
                for c in sb.chunks(i)
            )
            assert data[: sb.attr(i).size] == raw.content(p), p
    assert os.path.exists(tmp_path / f"{raw.blob_id}.blob.data.chunk_map")


def test_sequential_reads_fetch_the_next_chunks_in_the_background(raw):
    be = SlowBackend(raw.blobs)
    dev = ChunkDevice(raw.sb, be, readahead_chunks=2, batch_size=raw.batch)
    dev.load()
    del be.calls[:]  # blob meta reads (v6)
    ino = raw.ino(raw.repeat)
    size = raw.sb.attr(ino).size
    chunks = raw.sb.chunks(ino)  # X, X, Y
    dev.read(chunks, size, 0, 4096)
    deadline = time.monotonic() + 10
    while len(be.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    offsets = sorted(off for _b, off, _s in be.calls)
    assert offsets == sorted({c.compressed_offset for c in chunks})
    calls = len(be.calls)
    cs = raw.chunk_size
    assert dev.read(chunks, size, 2 * cs, 7) == raw.content(raw.repeat)[2 * cs : 2 * cs + 7]
    assert len(be.calls) == calls  # already fetched ahead
    dev.close()


def test_random_reads_do_not_read_ahead(raw):
    be = SlowBackend(raw.blobs)
    dev = ChunkDevice(raw.sb, be, readahead_chunks=2, memory_cache=0, batch_size=raw.batch)
    dev.load()
    del be.calls[:]  # blob meta reads (v6)
    ino = raw.ino(raw.repeat)
    chunks = raw.sb.chunks(ino)
    size = raw.sb.attr(ino).size
    dev.read(chunks, size, raw.chunk_size, 10)  # chunk 1 without chunk 0 before it: no read-ahead
    time.sleep(0.2)
    assert len(be.calls) == 1
    dev.close()
