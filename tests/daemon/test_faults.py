"""Corrupted chunk data, concurrent readers across chunk boundaries."""

from __future__ import annotations

import errno
import os
import random
import struct
import threading
from pathlib import Path

import pytest

from tests.daemon.conftest import copy_tree, localfs_config
from tests.golden import V6_BLOB_ID, golden_path

V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def _read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


def test_v5_flipped_byte_is_eio_with_validation(nydusd, tmp_path):
    """Chunk 0 of the uncompressed v5 blob is /hardlink-test/foo (944 bytes at offset 0)."""
    blobs = copy_tree(golden_path("upstream", "v5", "blobs"), tmp_path / "blobs")
    _flip(blobs / V5_BLOB, 100)
    boot = golden_path("upstream", "v5", "sha256-nocompress-repeatable")
    d = nydusd(boot, localfs_config(blobs, validate=True))
    mnt = d.mountpoint
    for name in ("hardlink-test/foo", "normal-file-test/test.sh"):  # the same inode twice
        assert _read_errno(mnt / name) == errno.EIO
    # other files (other chunks) still read, and the daemon still answers
    assert (mnt / "normal-file-test/holefiles/head-hole-1").stat().st_size == 2097159
    assert len((mnt / "normal-file-test/holefiles/head-hole-1").read_bytes()) == 2097159
    assert d.alive()
    assert d.get("/api/v1/daemon").json()["state"] == "RUNNING"
    log = d.log()
    assert f"blob {V5_BLOB} chunk 0: digest mismatch" in log
    # a failed chunk is not cached: asking again fails again
    assert _read_errno(mnt / "hardlink-test/test.sh") == errno.EIO
    m = d.get("/api/v1/metrics").json()
    assert m["fop_errors"][4] >= 3  # read errors


def test_v5_flipped_byte_without_validation_is_returned(nydusd, tmp_path):
    """Without digest_validate the same corruption goes unnoticed: validation is what catches it."""
    blobs = copy_tree(golden_path("upstream", "v5", "blobs"), tmp_path / "blobs")
    _flip(blobs / V5_BLOB, 100)
    boot = golden_path("upstream", "v5", "sha256-nocompress-repeatable")
    d = nydusd(boot, localfs_config(blobs, validate=False))
    data = (d.mountpoint / "hardlink-test/foo").read_bytes()
    assert len(data) == 944
    orig = (golden_path("upstream", "v5", "blobs") / V5_BLOB).read_bytes()[:944]
    assert data != orig and data[100] == orig[100] ^ 0x55


@pytest.mark.parametrize("cache", [False, True], ids=["nocache", "blobcache"])
def test_v6_corrupt_chunk_is_eio(nydusd, tmp_path, cache):
    """A flipped byte inside lib.rs's zstd chunk: EIO for lib.rs, sync_io.rs still reads."""
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    _flip(blobs / V6_BLOB_ID, 2000)
    cfg = localfs_config(blobs, validate=True, cache_dir=tmp_path / "cache" if cache else None)
    d = nydusd(golden_path("upstream", "v6", "bootstrap"), cfg)
    assert _read_errno(d.mountpoint / "lib.rs") == errno.EIO
    assert len((d.mountpoint / "sync_io.rs").read_bytes()) == 13400
    assert _read_errno(d.mountpoint / "lib.rs") == errno.EIO
    assert d.alive()
    assert f"blob {V6_BLOB_ID} chunk 0" in d.log()
    if cache:
        snap = d.get("/api/v1/metrics/blobcache").json()
        assert snap["data_all_ready"] is False  # the bad chunk never entered the cache


def test_concurrent_readers_get_source_bytes(nydusd, tmp_path):
    """16 threads read random ranges across the 1 MiB chunk boundaries of the v5 image."""
    boot = golden_path("upstream", "v5", "blake3-lz4_block-non_repeatable")
    d = nydusd(
        boot,
        localfs_config(
            golden_path("upstream", "v5", "blobs"), validate=True, cache_dir=tmp_path / "cache"
        ),
        "--thread-num",
        "4",
    )
    # reference bytes: read through a second, independent path (the blob and the chunk
    # list of the bootstrap)
    from nydus.format.rafs import open_bootstrap

    sb = open_bootstrap(boot.read_bytes())
    blob = (golden_path("upstream", "v5", "blobs") / V5_BLOB).read_bytes()
    files = {}
    distinct: dict[int, int] = {}
    for rel in (
        "normal-file-test/holefiles/head-hole-1",
        "normal-file-test/holefiles/head-hole-2",
        "normal-file-test/holefiles/head-hole-3",
        "normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475/layer.tar",
    ):
        ino = os.lstat(d.mountpoint / rel).st_ino
        ref = b"".join(
            blob[c.compressed_offset : c.compressed_offset + c.compressed_size]
            for c in sb.chunks(ino)
        )
        files[rel] = ref
        distinct.update({c.ci_index: c.compressed_size for c in sb.chunks(ino)})
    assert any(len(v) > 2 * 1024 * 1024 for v in files.values())
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                rel = rng.choice(sorted(files))
                ref = files[rel]
                boundary = rng.choice([1 << 20, 2 << 20, rng.randrange(len(ref))])
                off = max(0, min(len(ref) - 1, boundary - rng.randrange(0, 70000)))
                size = rng.randrange(1, 300000)
                fd = os.open(d.mountpoint / rel, os.O_RDONLY)
                try:
                    got = os.pread(fd, size, off)
                finally:
                    os.close(fd)
                if got != ref[off : off + size]:
                    errors.append(f"{rel} [{off}, +{size}) differs")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for rel, ref in files.items():
        assert (d.mountpoint / rel).read_bytes() == ref
    back = d.get("/api/v1/metrics/backend").json()
    # every chunk these files use came from the backend exactly once
    assert back["read_amount_total"] == sum(distinct.values())
    assert back["read_errors"] == 0


@pytest.mark.parametrize(
    ("field", "offset", "fmt"),
    [("mtime", 32, "<Q"), ("size", 8, "<Q")],
    ids=["mtime-2^63", "size-2^63"],
)
def test_inode_the_kernel_cannot_show_is_eio_and_the_mount_lives(
    nydusd, tmp_path, field, offset, fmt
):
    """An inode with mtime or size >= 2^63 once killed nydusd at its stat (OverflowError
    in the FUSE adapter, the mount gone): now that stat is EIO and the rest is served."""
    from nydus.format.rafs import walk
    from nydus.format.v6reader import RafsV6Super
    from tests.helpers.layers import F
    from tests.image_factory import build_image

    img = build_image(tmp_path / "img", [F("good", b"good bytes\n"), F("bad", b"bad\n")])
    boot = bytearray(img.bootstrap.read_bytes())
    sb = RafsV6Super(bytes(boot))
    struct.pack_into(fmt, boot, sb.inode_offset(dict(walk(sb))[b"/bad"]) + offset, 1 << 63)
    img.bootstrap.write_bytes(bytes(boot))
    d = nydusd(img.bootstrap, localfs_config(img.blob_dir, validate=True), log_level="debug")
    mnt = d.mountpoint
    for _ in range(2):
        with pytest.raises(OSError) as exc:
            os.stat(mnt / "bad")
        assert exc.value.errno == errno.EIO
        assert (mnt / "good").read_bytes() == b"good bytes\n"
    assert d.proc.poll() is None
    assert f"{field} 9223372036854775808 is out of range" in d.log()
