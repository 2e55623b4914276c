"""Prefetch at mount, counted at the registry (through a recording proxy): the prefetch table's
chunks in a few merged requests in the background, demand reads waiting for (never repeating) a
fetch in flight and going ahead of queued prefetch work, `bandwidth_limit` honoured,
`prefetch_all` in large ranges."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.converter.conftest import convert, get_manifest, http, nydusify, registry_config
from tests.converter.images import Layout, make_image, push
from tests.fault_proxy import FaultProxy
from tests.helpers.layers import D, F

KIB = 1 << 10
MIB = 1 << 20
CHUNK = 64 * KIB  # converted with --chunk-size 0x10000: many chunks, small images
# files the "start workload" reads, in order; sizes make chunks of both full and partial size
LISTED = [f"/app/m{i:02}" for i in range(24)]
UNLISTED = [f"/other/u{i:02}" for i in range(6)]
DATA = {p: os.urandom(90 * KIB + 1000 * i) for i, p in enumerate(LISTED)} | {
    p: os.urandom(200 * KIB) for p in UNLISTED
}


def _layers() -> list[list]:
    listed = [F(p.lstrip("/"), DATA[p]) for p in LISTED]
    other = [F(p.lstrip("/"), DATA[p]) for p in UNLISTED]
    return [[D("app"), *listed[:12]], [D("app"), *listed[12:], D("other"), *other]]


@pytest.fixture(scope="module")
def images(registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("prefetch")
    layout = Layout(base / "layout")
    layout.add_image("v1", make_image(_layers()))
    push(layout, "v1", f"{registry.host}/pf:v1")
    work = base / "w" / "tmp"
    work.parent.mkdir()
    convert(f"{registry.host}/pf:v1", f"{registry.host}/pf:nydus", work, "--chunk-size", "0x10000")
    listing = base / "list"
    listing.write_text("".join(f"{p}\n" for p in LISTED))
    nydusify(
        "optimize",
        "--source",
        f"{registry.host}/pf:nydus",
        "--target",
        f"{registry.host}/pf:opt",
        "--source-insecure",
        "--target-insecure",
        "--prefetch-files",
        str(listing),
        "--work-dir",
        str(base / "w" / "opt"),
        cwd=base,
    ).ok()
    with http(registry) as c:
        opt, _, _ = get_manifest(c, "pf", "opt")
        plain, _, _ = get_manifest(c, "pf", "nydus")
    return {"opt": opt, "plain": plain, "base": base}


@contextlib.contextmanager
def _proxy(registry) -> Iterator[FaultProxy]:
    """A proxy in front of the registry that records every request's range (no faults)."""
    p = FaultProxy(registry.host)
    try:
        yield p
    finally:
        p.stop()


def _bootstrap(registry, manifest, dest):
    import io
    import tarfile

    from tests.converter.conftest import get_blob

    with http(registry) as c:
        gz = get_blob(c, "pf", manifest["layers"][-1]["digest"])
    with tarfile.open(fileobj=io.BytesIO(gz), mode="r:gz") as tf:
        f = tf.extractfile("image/image.boot")
        assert f is not None
        dest.write_bytes(f.read())
    return dest


def _start(nydusd, registry, proxy, manifest, tmp_path, prefetch, name="d", **extra):
    boot = _bootstrap(registry, manifest, tmp_path / f"{name}.boot")
    cfg = registry_config(proxy.host, "pf", digest_validate=False, **extra)
    cfg["device"]["cache"] = {"type": "blobcache", "config": {"work_dir": str(tmp_path / name)}}
    cfg["fs_prefetch"] = prefetch
    return nydusd(boot, cfg, name=name)


def _wait_prefetch(d, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = d.get("/api/v1/metrics/blobcache").json()
        if m["prefetch_end_time_secs"]:
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.05)


def _data_ranges(proxy, manifest) -> dict[str, list[tuple[int, int]]]:
    return {b["digest"]: proxy.blob_ranges(b["digest"]) for b in manifest["layers"][:-1]}


def _overlaps(ranges: list[tuple[int, int]]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rs = sorted(ranges)
    return [(a, b) for a, b in itertools.pairwise(rs) if b[0] < a[1]]


def test_table_prefetch_is_merged_and_demand_waits_for_it(images, registry, nydusd, tmp_path):
    man = images["opt"]
    prefetch_blob = man["layers"][-2]["digest"]
    with _proxy(registry) as proxy:
        d = _start(
            nydusd,
            registry,
            proxy,
            man,
            tmp_path,
            {"enable": True, "threads_count": 2, "merging_size": 256 * KIB, "prefetch_all": False},
        )
        # the workload starts at once, while prefetch is under way
        for p in LISTED:
            assert (d.mountpoint / p.lstrip("/")).read_bytes() == DATA[p]
        m = _wait_prefetch(d)
        ranges = _data_ranges(proxy, man)
    size = man["layers"][-2]["size"]
    # the table's chunks are the prefetch blob's data: about size/256 KiB requests
    assert m["prefetch_requests_count"] >= 1
    assert m["prefetch_requests_count"] <= size // (256 * KIB) + 3
    assert m["prefetch_unmerged_chunks"] > 2 * m["prefetch_requests_count"]
    # demand reads found the data prefetched (waited for the fetch or read it afterwards)
    assert m["prefetch_served_reads"] > 0
    blob_gets = ranges[prefetch_blob]
    # the prefetch blob: its meta (CI array, ToC, digests) plus the prefetch ranges plus a
    # few demand reads at most
    assert len(blob_gets) <= m["prefetch_requests_count"] + 3 + 3, blob_gets
    for digest, rs in ranges.items():
        assert _overlaps(rs) == [], (digest, rs)  # no byte fetched twice
    # the other blobs were not read for data at all (the listed files moved out of them)
    for digest, rs in ranges.items():
        if digest != prefetch_blob:
            assert all(e - s <= 16 * KIB for s, e in rs), (digest, rs)  # meta reads only


def test_demand_reads_go_ahead_of_queued_prefetch(images, registry, nydusd, tmp_path):
    man = images["plain"]  # its table is "/": the whole image, slowly
    with _proxy(registry) as proxy:
        d = _start(
            nydusd,
            registry,
            proxy,
            man,
            tmp_path,
            {
                "enable": True,
                "threads_count": 1,
                "merging_size": 128 * KIB,
                "bandwidth_rate": 512 * KIB,
                "prefetch_all": False,
            },
        )
        time.sleep(0.5)  # prefetch under way
        n_before = len(proxy.seen)
        assert (d.mountpoint / UNLISTED[-1].lstrip("/")).read_bytes() == DATA[UNLISTED[-1]]
        n_after = len(proxy.seen)
        m = d.get("/api/v1/metrics/blobcache").json()
        assert m["prefetch_end_time_secs"] == 0  # prefetch still running: the read did not wait
        # the read cost at most a few requests of its own while prefetch kept its pace
        assert n_after - n_before <= 6
        ranges = _data_ranges(proxy, man)
    for digest, rs in ranges.items():
        assert _overlaps(rs) == [], (digest, rs)


def test_bandwidth_limit_holds(images, registry, nydusd, tmp_path):
    man = images["opt"]
    rate = 512 * KIB
    with _proxy(registry) as proxy:
        d = _start(
            nydusd,
            registry,
            proxy,
            man,
            tmp_path,
            {
                "enable": True,
                "threads_count": 4,
                "merging_size": 128 * KIB,
                "bandwidth_rate": rate,
                "prefetch_all": False,
            },
        )
        m = _wait_prefetch(d)
    secs = (m["prefetch_end_time_secs"] - m["prefetch_begin_time_secs"]) + (
        m["prefetch_end_time_millis"] - m["prefetch_begin_time_millis"]
    ) / 1000
    got = m["prefetch_data_amount"] / secs
    assert secs >= 2.0, m  # a multi-second prefetch
    assert 0.8 * rate <= got <= 1.2 * rate, (got, m)


def test_prefetch_all_uses_large_ranges(images, registry, nydusd, tmp_path):
    man = images["plain"]
    with _proxy(registry) as proxy:
        d = _start(
            nydusd,
            registry,
            proxy,
            man,
            tmp_path,
            {"enable": True, "threads_count": 2, "prefetch_all": True},
        )
        m = _wait_prefetch(d)
        ranges = _data_ranges(proxy, man)
        total = sum(b["size"] for b in man["layers"][:-1])
        assert m["prefetch_data_amount"] >= 0.9 * (total - 64 * KIB * len(ranges))
        # everything, in 1 MiB ranges (merging_size's default) at most: never a request per chunk
        chunks = m["prefetch_unmerged_chunks"]
        assert m["prefetch_requests_count"] <= chunks // 8 + 2 * len(ranges), m
        for digest, rs in ranges.items():
            assert _overlaps(rs) == [], (digest, rs)
        # and everything reads back from the cache without another request
        n = len(proxy.seen)
        for p in LISTED + UNLISTED:
            assert (d.mountpoint / p.lstrip("/")).read_bytes() == DATA[p]
        assert len(proxy.seen) == n


def test_prefetch_without_waiting_at_mount(images, registry, nydusd, tmp_path):
    """The mount is ready (RUNNING) while the prefetch is still under way."""
    man = images["plain"]
    with _proxy(registry) as proxy:
        d = _start(
            nydusd,
            registry,
            proxy,
            man,
            tmp_path,
            {"enable": True, "threads_count": 1, "bandwidth_rate": 256 * KIB},
        )
        m = d.get("/api/v1/metrics/blobcache").json()
        assert m["prefetch_end_time_secs"] == 0
        assert d.get("/api/v1/daemon").json()["state"] == "RUNNING"
        stopped = threading.Event()
        t = threading.Thread(target=lambda: (d.stop(), stopped.set()))
        t.start()
        t.join(30)
        assert stopped.is_set()  # stopping does not wait for the prefetch either


@pytest.mark.kernel("erofs", "fuse")
def test_prefetch_with_the_erofs_driver(images, registry, nydusd, tmp_path):
    """The kernel serves the metadata, the daemon the blob views: prefetch fills the same
    caches, and the workload's reads find the data there."""
    man = images["opt"]
    prefetch_blob = man["layers"][-2]["digest"]
    with _proxy(registry) as proxy:
        boot = _bootstrap(registry, man, tmp_path / "e.boot")
        cfg = registry_config(proxy.host, "pf", digest_validate=False)
        cfg["device"]["cache"] = {"type": "blobcache", "config": {"work_dir": str(tmp_path / "e")}}
        cfg["fs_prefetch"] = {"enable": True, "threads_count": 2, "prefetch_all": False}
        d = nydusd(boot, cfg, "--fs-driver", "erofs", name="e")
        m = _wait_prefetch(d)
        for p in LISTED:
            assert (d.mountpoint / p.lstrip("/")).read_bytes() == DATA[p]
        ranges = _data_ranges(proxy, man)
    assert m["prefetch_data_amount"] > 0 and m["prefetch_requests_count"] >= 1
    # after the prefetch the listed files cost no request: only the prefetch and the meta
    assert len(ranges[prefetch_blob]) <= m["prefetch_requests_count"] + 3, ranges[prefetch_blob]
    for digest, rs in ranges.items():
        assert _overlaps(rs) == [], (digest, rs)
