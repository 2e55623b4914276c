"""nydusd benchmark cases for `benchmarks/run.py` (registered there with `register`).

* ``nydusd-seqread``: sequential read of one large file (1 GiB; 16 MiB with ``--quick``) through
  a nydusd FUSE mount with an empty blob cache (cold), again with the cache filled and the page
  cache dropped (warm), and without a blob cache — beside reading the same file from local disk
  with the page cache dropped.
* ``nydusd-randread``: 4 KiB random reads of that file (latency percentiles), local vs. mount.
* ``nydusd-stat``: ``find`` + ``lstat`` of every entry of the >= 20,000-file benchmark tree,
  source directory vs. a freshly started mount.

Timings are wall-clock and reported, never asserted. Dropping the page cache needs root
(``echo 3 > /proc/sys/vm/drop_caches``); without it the rows say so in ``detail``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nydus.daemon.process import NydusdCommand, start_nydusd

MB = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
NYDUSD = str(Path(sys.executable).parent / "nydusd")
NYDUS_IMAGE = str(Path(sys.executable).parent / "nydus-image")
#: nydusd's --fs-driver values, each measured
DRIVERS = ("fuse", "erofs")


# -- helpers ---------------------------------------------------------------------------------------


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Daemon:
    """A nydusd subprocess serving one mount (`nydus.daemon.process`)."""

    def __init__(
        self,
        base: Path,
        bootstrap: Path,
        blob_dir: Path,
        cache_dir: Path | None,
        threads: int = 4,
        driver: str = "fuse",
    ) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.mnt = base / "mnt"
        self.mnt.mkdir(exist_ok=True)
        cfg: dict[str, Any] = {
            "device": {"backend": {"type": "localfs", "config": {"dir": str(blob_dir)}}},
            "mode": "direct",
        }
        if cache_dir is not None:
            cfg["device"]["cache"] = {"type": "blobcache", "config": {"work_dir": str(cache_dir)}}
        (base / "config.json").write_text(json.dumps(cfg))
        command = NydusdCommand(
            self.mnt,
            bootstrap,
            base / "api.sock",
            config=base / "config.json",
            log_level="warn",
            threads=threads,
            binary=NYDUSD,
            fs_driver=driver,
            work_dir=base / "work",
        )
        self.process = start_nydusd(command, base / "nydusd.log", timeout=60)
        self.start_seconds = self.process.ready_seconds or 0.0

    def api(self, path: str) -> Any:
        return self.process.client.call("GET", path.removeprefix("/api/"))

    def peak_rss_mib(self) -> float:
        try:
            for line in open(f"/proc/{self.process.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self) -> None:
        self.process.stop(timeout=60)


def _read_file(path: Path, bufsize: int = MIB) -> tuple[int, float]:
    buf = bytearray(bufsize)
    total = 0
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    return total, time.monotonic() - t0


def _random_reads(path: Path, size: int, count: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    blocks = size // 4096
    offsets = [rng.randrange(blocks) * 4096 for _ in range(count)]
    lat = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            t0 = time.perf_counter()
            os.pread(fd, 4096, off)
            lat.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return lat


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def _build(src: Path, out: Path, compressor: str = "zstd") -> tuple[Path, Path]:
    """nydus-image create once; reuse while the marker says it is complete."""
    marker = out / "done.json"
    boot, blobs = out / "bootstrap", out / "blobs"
    if marker.exists() and boot.exists():
        return boot, blobs
    if out.exists():
        shutil.rmtree(out)
    blobs.mkdir(parents=True)
    r = subprocess.run(
        [
            NYDUS_IMAGE,
            "create",
            str(src),
            "--bootstrap",
            str(boot),
            "--blob-dir",
            str(blobs),
            "--compressor",
            compressor,
            "--log-level",
            "warn",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"nydus-image create failed: {r.stderr.strip()[-500:]}")
    marker.write_text(json.dumps({"compressor": compressor}))
    return boot, blobs


def _big_file(ctx: Any) -> tuple[Path, int, Path, Path]:
    """A large file of mixed content (40 % random, 60 % text-like) and its zstd image."""
    size = 16 * MIB if ctx.quick else GIB
    base = ctx.workdir / f"nydusd-bigfile-{size}"
    src = base / "src"
    path = src / "big.bin"
    marker = base / "src.done"
    if not (marker.exists() and path.exists() and path.stat().st_size == size):
        ctx.log(f"generating {size / MIB:.0f} MiB file {path} ...")
        if base.exists():
            shutil.rmtree(base)
        src.mkdir(parents=True)
        rng = random.Random(1)
        table = bytes(b"etaoinshrdlu \n.,"[i % 16] for i in range(256))
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 4 * MIB)
                piece = rng.randbytes(n)
                f.write(piece if rng.random() < 0.4 else piece.translate(table))
                left -= n
        marker.write_text("ok")
    ctx.log("building its nydus image (zstd) ...")
    boot, blobs = _build(src, base / "image")
    return path, size, boot, blobs


# -- cases -------------------------------------------------------------------------------------------


def case_seqread(ctx: Any, Row: type) -> list[Any]:
    path, size, boot, blobs = _big_file(ctx)
    base = ctx.workdir / "nydusd-seqread"
    rows: list[Any] = []
    dropped = drop_caches()
    note = "" if dropped else "page cache NOT dropped (not root)"

    def row(name: str, tool: str, nbytes: int, secs: float, rss: float = 0.0, **extra: Any) -> Any:
        return Row(
            "nydusd-seqread",
            name,
            tool,
            seconds=round(secs, 3),
            input_bytes=nbytes,
            mb_per_s=round(nbytes / MB / secs, 1) if secs else 0.0,
            peak_rss_mib=round(rss, 1),
            detail=note,
            extra=extra,
        )

    ctx.log("seqread: local disk")
    drop_caches()
    n, secs = _read_file(path)
    rows.append(row("local disk, cold", "cat", n, secs))
    n, secs = _read_file(path)
    rows.append(row("local disk, page cache", "cat", n, secs))

    local_warm = secs
    for driver in DRIVERS:
        rows += _seqread_driver(ctx, base, boot, blobs, driver, row, local_warm)
    return rows


def _seqread_driver(
    ctx: Any,
    base: Path,
    boot: Path,
    blobs: Path,
    driver: str,
    row: Callable[..., Any],
    local_warm: float,
) -> list[Any]:
    rows: list[Any] = []
    cache = base / f"cache-{driver}"
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    d = Daemon(base / f"d-cache-{driver}", boot, blobs, cache, driver=driver)
    try:
        ctx.log(f"seqread [{driver}]: cold (empty blob cache)")
        drop_caches()
        n, secs = _read_file(d.mnt / "big.bin")
        back = d.api("/api/v1/metrics/backend")
        rows.append(
            row(
                f"nydusd {driver} cold (blobcache)",
                "nydusd",
                n,
                secs,
                d.peak_rss_mib(),
                backend_bytes=back["read_amount_total"],
                start_s=round(d.start_seconds, 3),
                fs_driver=driver,
            )
        )
        ctx.log(f"seqread [{driver}]: warm (blob cache filled, page cache dropped)")
        drop_caches()
        before = d.api("/api/v1/metrics/backend")["read_amount_total"]
        n, secs = _read_file(d.mnt / "big.bin")
        after = d.api("/api/v1/metrics/backend")["read_amount_total"]
        rows.append(
            row(
                f"nydusd {driver} warm (blobcache)",
                "nydusd",
                n,
                secs,
                d.peak_rss_mib(),
                backend_bytes=after - before,
                fs_driver=driver,
            )
        )
        n, secs = _read_file(d.mnt / "big.bin")
        ratio = round(local_warm / secs, 3) if secs else 0.0
        rows.append(
            row(
                f"nydusd {driver}, page cache",
                "nydusd",
                n,
                secs,
                d.peak_rss_mib(),
                fs_driver=driver,
                of_local_page_cache=ratio,
            )
        )
        rows[-1].detail = f"{ratio * 100:.0f}% of the local page-cache read"
    finally:
        d.stop()
    d = Daemon(base / f"d-nocache-{driver}", boot, blobs, None, driver=driver)
    try:
        ctx.log(f"seqread [{driver}]: without blob cache")
        drop_caches()
        n, secs = _read_file(d.mnt / "big.bin")
        rows.append(
            row(f"nydusd {driver} no cache", "nydusd", n, secs, d.peak_rss_mib(), fs_driver=driver)
        )
    finally:
        d.stop()
    return rows


def case_randread(ctx: Any, Row: type) -> list[Any]:
    path, size, boot, blobs = _big_file(ctx)
    base = ctx.workdir / "nydusd-randread"
    count = 200 if ctx.quick else 2000
    note = "" if drop_caches() else "page cache NOT dropped (not root)"
    rows: list[Any] = []

    def row(name: str, tool: str, lat: list[float], **extra: Any) -> Any:
        p50, p90, p99 = (round(_pct(lat, p) * 1e6) for p in (50, 90, 99))
        return Row(
            "nydusd-randread",
            name,
            tool,
            seconds=round(sum(lat), 3),
            input_bytes=4096 * len(lat),
            mb_per_s=round(4096 * len(lat) / MB / sum(lat), 2),
            detail=f"4 KiB reads: p50 {p50} us, p90 {p90} us, p99 {p99} us {note}".strip(),
            extra={
                "reads": len(lat),
                "p50_us": p50,
                "p90_us": p90,
                "p99_us": p99,
                "mean_us": round(statistics.mean(lat) * 1e6),
                **extra,
            },
        )

    ctx.log(f"randread: {count} x 4 KiB, local disk")
    drop_caches()
    rows.append(row("local disk, cold", "pread", _random_reads(path, size, count)))
    cache = base / "cache"
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    d = Daemon(base / "d", boot, blobs, cache)
    try:
        ctx.log("randread: nydusd cold (empty blob cache)")
        drop_caches()
        rows.append(
            row("nydusd cold (blobcache)", "nydusd", _random_reads(d.mnt / "big.bin", size, count))
        )
        ctx.log("randread: filling the blob cache, then nydusd warm")
        _read_file(d.mnt / "big.bin")
        drop_caches()
        rows.append(
            row(
                "nydusd warm (blobcache)",
                "nydusd",
                _random_reads(d.mnt / "big.bin", size, count, seed=8),
            )
        )
    finally:
        d.stop()
    return rows


def _find_stat(root: Path) -> tuple[int, float]:
    t0 = time.monotonic()
    r = subprocess.run(
        ["find", str(root), "-printf", "%i %s %m %u %g %T@ %p\n"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return r.stdout.count(b"\n"), time.monotonic() - t0


def case_stat(ctx: Any, Row: type, cached_tree: Callable[..., tuple[Path, dict]]) -> list[Any]:
    total, nfiles = (4 * MB, 200) if ctx.quick else (512 * MIB, 20_000)
    tree, stats = cached_tree(ctx, total, nfiles)
    boot, blobs = _build(tree, ctx.workdir / f"nydusd-stat-image-{total}-{nfiles}")
    note = "" if drop_caches() else "page cache NOT dropped (not root)"
    rows: list[Any] = []

    def row(name: str, tool: str, n: int, secs: float, **extra: Any) -> Any:
        return Row(
            "nydusd-stat",
            name,
            tool,
            seconds=round(secs, 3),
            input_bytes=0,
            detail=f"{n} entries, {n / secs:,.0f} entries/s {note}".strip(),
            extra={"entries": n, "entries_per_s": round(n / secs), **extra},
        )

    ctx.log(f"stat: find + lstat of {stats['files']} files, source directory")
    drop_caches()
    n, secs = _find_stat(tree)
    rows.append(row("source dir, cold", "find", n, secs))
    n, secs = _find_stat(tree)
    rows.append(row("source dir, warm", "find", n, secs))
    d = Daemon(ctx.workdir / "nydusd-stat", boot, blobs, None)
    try:
        ctx.log("stat: the same through a fresh nydusd mount")
        drop_caches()
        n, secs = _find_stat(d.mnt)
        rows.append(
            row(
                "nydusd mount, cold",
                "nydusd",
                n,
                secs,
                start_s=round(d.start_seconds, 3),
                peak_rss_mib=round(d.peak_rss_mib(), 1),
            )
        )
        n, secs = _find_stat(d.mnt)
        rows.append(row("nydusd mount, warm", "nydusd", n, secs))
    finally:
        d.stop()
    return rows


def register(
    cases: dict[str, Callable[[Any], list[Any]]],
    row_cls: type,
    cached_tree: Callable[..., tuple[Path, dict]],
) -> None:
    """Add the nydusd cases to run.py's CASES registry."""
    cases["nydusd-seqread"] = lambda ctx: case_seqread(ctx, row_cls)
    cases["nydusd-randread"] = lambda ctx: case_randread(ctx, row_cls)
    cases["nydusd-stat"] = lambda ctx: case_stat(ctx, row_cls, cached_tree)
