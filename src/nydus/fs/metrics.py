"""Per-operation filesystem metrics in upstream nydusd's shape (`GET /api/v1/metrics`,
`/api/v1/metrics/files`, `/api/v1/metrics/inflight`)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nydus.errors import NydusError

__all__ = ["FOPS", "FUSE_OPCODES", "FsMetrics"]

#: operation order of the fop_* arrays (interfaces.md §4.4)
FOPS = (
    "getattr",
    "readlink",
    "open",
    "release",
    "read",
    "statfs",
    "getxattr",
    "listxattr",
    "opendir",
    "lookup",
    "readdir",
    "readdirplus",
    "access",
    "forget",
    "batch_forget",
)
_FOP_INDEX = {name: i for i, name in enumerate(FOPS)}
#: FUSE protocol opcodes, for the inflight report
FUSE_OPCODES = {
    "lookup": 1,
    "forget": 2,
    "getattr": 3,
    "readlink": 5,
    "open": 14,
    "read": 15,
    "statfs": 17,
    "release": 18,
    "getxattr": 22,
    "listxattr": 23,
    "opendir": 27,
    "readdir": 28,
    "releasedir": 29,
    "access": 34,
    "batch_forget": 42,
    "readdirplus": 44,
}
#: block-size buckets <1K, 1K, 4K, 16K, 64K, 128K, 512K, 1M+
_SIZE_BOUNDS = (1 << 10, 4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20)
#: read latency buckets in microseconds: <=200us, <=1ms, <=20ms, <=50ms, <=500ms, <=1s, <=2s, >2s
_LAT_US = (200, 1_000, 20_000, 50_000, 500_000, 1_000_000, 2_000_000)


def _bucket(value: float, bounds: tuple[float, ...], inclusive: bool) -> int:
    for i, b in enumerate(bounds):
        if (value <= b) if inclusive else (value < b):
            return i
    return len(bounds)


class _FileStats:
    __slots__ = ("block_count_read", "data_read", "fop_errors", "fop_hits", "total_fops")

    def __init__(self) -> None:
        self.total_fops = 0
        self.data_read = 0
        self.block_count_read = [0] * 8
        self.fop_hits = [0] * len(FOPS)
        self.fop_errors = [0] * len(FOPS)

    def snapshot(self) -> dict[str, object]:
        return {
            "total_fops": self.total_fops,
            "data_read": self.data_read,
            "block_count_read": list(self.block_count_read),
            "fop_hits": list(self.fop_hits),
            "fop_errors": list(self.fop_errors),
        }


class FsMetrics:
    """Global and (optionally) per-file counters of one mounted filesystem."""

    def __init__(
        self,
        id: str = "/",
        files: bool = False,
        access_pattern: bool = False,
        latest_read_files: bool = False,
    ) -> None:
        self.id = id
        self.files_enabled = files
        self.access_pattern_enabled = access_pattern
        self.latest_read_files_enabled = latest_read_files
        self._lock = threading.Lock()
        self.nr_opens = 0
        self.data_read = 0
        self.block_count_read = [0] * 8
        self.fop_hits = [0] * len(FOPS)
        self.fop_errors = [0] * len(FOPS)
        self.fop_cumulative_latency_total = [0] * len(FOPS)
        self.read_latency_dist = [0] * 8
        self._files: dict[int, _FileStats] = {}
        self._latest: set[int] = set()
        self._inflight: dict[int, tuple[int, int, int]] = {}
        self._unique = itertools.count(1)

    @contextmanager
    def op(self, name: str, ino: int = 0) -> Iterator[None]:
        """Account one operation: hit, error (a NydusError escaping), latency, in-flight."""
        unique = next(self._unique)
        t0 = time.monotonic()
        self._inflight[unique] = (ino, FUSE_OPCODES.get(name, 0), int(time.time()))
        failed = False
        try:
            yield
        except NydusError:
            failed = True
            raise
        finally:
            self._inflight.pop(unique, None)
            self.record_op(name, ino, int((time.monotonic() - t0) * 1_000_000), failed)

    def record_op(self, name: str, ino: int, us: int, failed: bool = False) -> None:
        """Account one finished operation that took `us` microseconds."""
        idx = _FOP_INDEX[name]
        with self._lock:
            self.fop_hits[idx] += 1
            self.fop_cumulative_latency_total[idx] += us
            if failed:
                self.fop_errors[idx] += 1
            if name == "read":
                self.read_latency_dist[_bucket(us, _LAT_US, True)] += 1
            if self.files_enabled and ino:
                fs = self._files.get(ino)
                if fs is None:
                    fs = self._files[ino] = _FileStats()
                fs.total_fops += 1
                fs.fop_hits[idx] += 1
                if failed:
                    fs.fop_errors[idx] += 1

    def count(self, name: str, ino: int = 0, n: int = 1) -> None:
        """Count an operation that has no work of its own (forget, access...)."""
        with self._lock:
            self.fop_hits[_FOP_INDEX[name]] += n

    def record_open(self) -> None:
        with self._lock:
            self.nr_opens += 1

    def record_release(self) -> None:
        with self._lock:
            self.nr_opens = max(0, self.nr_opens - 1)

    def record_read(self, ino: int, nbytes: int) -> None:
        b = _bucket(nbytes, _SIZE_BOUNDS, False)
        with self._lock:
            self.data_read += nbytes
            self.block_count_read[b] += 1
            if self.files_enabled:
                fs = self._files.get(ino)
                if fs is None:
                    fs = self._files[ino] = _FileStats()
                fs.data_read += nbytes
                fs.block_count_read[b] += 1
            if self.latest_read_files_enabled:
                self._latest.add(ino)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "files_account_enabled": self.files_enabled,
                "access_pattern_enabled": self.access_pattern_enabled,
                "record_latest_read_files_enabled": self.latest_read_files_enabled,
                "measure_latency": True,
                "id": self.id,
                "nr_opens": self.nr_opens,
                "data_read": self.data_read,
                "block_count_read": list(self.block_count_read),
                "fop_hits": list(self.fop_hits),
                "fop_errors": list(self.fop_errors),
                "fop_cumulative_latency_total": list(self.fop_cumulative_latency_total),
                "read_latency_dist": list(self.read_latency_dist),
            }

    def files_snapshot(self) -> dict[str, object]:
        with self._lock:
            return {str(ino): s.snapshot() for ino, s in sorted(self._files.items())}

    def take_latest_read_files(self) -> list[int]:
        with self._lock:
            out = sorted(self._latest)
            self._latest.clear()
            return out

    def inflight(self) -> list[dict[str, int]]:
        items = list(self._inflight.items())
        return [
            {"inode": ino, "opcode": opcode, "unique": unique, "timestamp_secs": ts}
            for unique, (ino, opcode, ts) in sorted(items)
        ]
