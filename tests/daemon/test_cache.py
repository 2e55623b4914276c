"""The blob cache across daemon restarts: data already read is never fetched again."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from nydus.format.rafs import open_bootstrap
from tests.daemon.conftest import copy_tree, fill_cache_then_flip, force_unmount, localfs_config
from tests.golden import V6_BLOB_ID, golden_path

V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


def _read_all(mnt) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(mnt):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, mnt)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_v6_restart_fetches_nothing(nydusd, tmp_path, stop_signal):
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    cache = tmp_path / "cache"
    cfg = localfs_config(blobs, validate=True, cache_dir=cache)
    boot = golden_path("upstream", "v6", "bootstrap")
    d1 = nydusd(boot, cfg, name="first")
    first = _read_all(d1.mountpoint)
    b1 = d1.get("/api/v1/metrics/backend").json()
    assert b1["read_amount_total"] == 4128 + 1024 + 64 + 7802
    d1.stop(stop_signal)
    force_unmount(d1.mountpoint)
    # cache files as upstream names them (interfaces.md §4.2, rafs-format §6.10)
    data = cache / f"{V6_BLOB_ID}.blob.data"
    assert data.stat().st_size == 36864  # the blob's uncompressed view
    chunk_map = (cache / f"{V6_BLOB_ID}.blob.data.chunk_map").read_bytes()
    assert len(chunk_map) == 4096 + 1
    assert chunk_map[:16] == bytes.fromhex("50414d420100000050414d4350414d4d")
    assert chunk_map[4096] == 0b1100_0000  # chunks 0 and 1 ready
    meta = (cache / f"{V6_BLOB_ID}.blob.meta").read_bytes()
    assert len(meta) == 4096 + 4096  # CI (32 bytes) padded to 4 KiB + the header
    raw = (blobs / V6_BLOB_ID).read_bytes()
    assert meta[:32] == raw[8314:8346] and meta[4096:] == raw[8346:12442]
    assert (cache / f"{V6_BLOB_ID}.blob.digest").read_bytes() == raw[12954:13018]
    # the uncompressed view holds lib.rs at 0 and sync_io.rs at 20480
    view = data.read_bytes()
    assert hashlib.sha256(view[:16931]).hexdigest() == first["lib.rs"]
    assert hashlib.sha256(view[20480 : 20480 + 13400]).hexdigest() == first["sync_io.rs"]

    d2 = nydusd(boot, cfg, name="second")
    assert _read_all(d2.mountpoint) == first
    b2 = d2.get("/api/v1/metrics/backend").json()
    assert b2["read_amount_total"] == 0 and b2["read_count"] == 0
    c2 = d2.get("/api/v1/metrics/blobcache").json()
    assert c2["whole_hits"] >= 2 and c2["partial_hits"] == 0
    assert c2["data_all_ready"] is True


def test_v5_partial_cache_then_rest(nydusd, tmp_path):
    """Read a few files, restart: only the chunks not read before come from the backend."""
    blobs = golden_path("upstream", "v5", "blobs")
    cache = tmp_path / "cache"
    cfg = localfs_config(blobs, validate=True, cache_dir=cache)
    boot = golden_path("upstream", "v5", "sha256-nocompress-repeatable")
    d1 = nydusd(boot, cfg, name="first")
    hole = d1.mountpoint / "normal-file-test/holefiles/head-hole-1"
    first_bytes = hole.read_bytes()
    b1 = d1.get("/api/v1/metrics/backend").json()["read_amount_total"]
    assert 0 < b1 < 3508766
    d1.stop()
    d2 = nydusd(boot, cfg, name="second")
    assert (d2.mountpoint / "normal-file-test/holefiles/head-hole-1").read_bytes() == first_bytes
    assert d2.get("/api/v1/metrics/backend").json()["read_amount_total"] == 0
    everything = _read_all(d2.mountpoint)
    assert len(everything) == 23
    b2 = d2.get("/api/v1/metrics/backend").json()["read_amount_total"]
    # together the two runs fetched each byte of the 3,508,766-byte blob exactly once
    assert b1 + b2 == 3508766
    assert d2.get("/api/v1/metrics/blobcache").json()["data_all_ready"] is True
    assert (cache / f"{V5_BLOB}.blob.data").read_bytes() == (blobs / V5_BLOB).read_bytes()


@pytest.mark.parametrize("mode", ["cache_validate", "digest_validate"])
def test_corrupted_cache_file_is_refetched(nydusd, tmp_path, mode):
    """A byte flipped in the cache file is never served: with the blob cache's `validate`,
    and with `digest_validate` alone even when the cache was filled without validation."""
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    cache = tmp_path / "cache"
    boot = golden_path("upstream", "v6", "bootstrap")
    good = fill_cache_then_flip(
        nydusd, boot, blobs, cache, V6_BLOB_ID, validate=mode != "digest_validate"
    )
    cfg = localfs_config(blobs, validate=True, cache_dir=cache)
    cfg["device"]["cache"]["validate"] = mode == "cache_validate"
    # a daemon that validates nothing loads no chunk digests: the second one reads the
    # blob's ToC and digest section (and caches the digests) before it can check anything
    digests = cache / f"{V6_BLOB_ID}.blob.digest"
    had_digests = digests.exists()
    d2 = nydusd(boot, cfg, name="second")
    assert (d2.mountpoint / "lib.rs").read_bytes() == good
    toc_size = open_bootstrap(Path(boot).read_bytes()).blobs[0].blob_toc_size
    meta_bytes = 0 if had_digests else toc_size + digests.stat().st_size
    assert d2.get("/api/v1/metrics/backend").json()["read_amount_total"] == 4828 + meta_bytes
    assert "cached data fails its digest" in d2.log()


def _wait_all_ready(d, timeout: float = 30.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = d.get("/api/v1/metrics/blobcache").json()
        if snap["data_all_ready"] and snap["prefetch_end_time_secs"]:
            return snap
        time.sleep(0.05)
    raise AssertionError(f"prefetch did not finish: {snap}\n{d.log()}")


def test_prefetch_files_fill_the_cache_without_reads(nydusd, tmp_path):
    blobs = golden_path("upstream", "v5", "blobs")
    cache = tmp_path / "cache"
    plist = tmp_path / "prefetch.txt"
    plist.write_text("/normal-file-test/holefiles/head-hole-1\n/missing/file\n")
    boot = golden_path("upstream", "v5", "blake3-lz4_block-non_repeatable")
    d = nydusd(boot, localfs_config(blobs, cache_dir=cache), "--prefetch-files", str(plist))
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        snap = d.get("/api/v1/metrics/blobcache").json()
        if snap["prefetch_end_time_secs"]:
            break
        time.sleep(0.05)
    # head-hole-1 is chunk 13 (twice) and chunk 14: 1 MiB + 7 bytes
    assert snap["prefetch_data_amount"] == 1048576 + 7
    assert snap["prefetch_unmerged_chunks"] == 2
    assert "prefetch: /missing/file" in d.log()
    before = d.get("/api/v1/metrics/backend").json()["read_amount_total"]
    assert (d.mountpoint / "normal-file-test/holefiles/head-hole-1").stat().st_size == 2097159
    (d.mountpoint / "normal-file-test/holefiles/head-hole-1").read_bytes()
    assert d.get("/api/v1/metrics/backend").json()["read_amount_total"] == before


def test_fs_prefetch_all(nydusd, tmp_path):
    """fs_prefetch {enable, prefetch_all} with no prefetch table: the whole image is fetched."""
    blobs = golden_path("upstream", "v5", "blobs")
    cfg = localfs_config(
        blobs, cache_dir=tmp_path / "cache", fs_prefetch={"enable": True, "threads_count": 2}
    )
    d = nydusd(golden_path("upstream", "v5", "sha256-nocompress-repeatable"), cfg)
    snap = _wait_all_ready(d)
    assert snap["prefetch_data_amount"] == 3508766
    assert d.get("/api/v1/metrics/backend").json()["read_amount_total"] == 3508766
    assert (tmp_path / "cache" / f"{V5_BLOB}.blob.data").read_bytes() == (
        blobs / V5_BLOB
    ).read_bytes()
