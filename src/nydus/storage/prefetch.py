"""Prefetch: fetch a list of chunks (the bootstrap's prefetch table, `--prefetch-files`,
then with `prefetch_all` everything else) into the caches in the background.

* The chunks are planned per blob in blob order (blobs in the order the list first names
  them), merged into ranges of at most `merging_size` bytes, and fetched by `threads`
  workers, one backend request per range.
* The chunk device's in-flight map is the single place that says who fetches a chunk: a
  worker claims a range's chunks just before fetching it and skips the ones someone else
  holds or has in flight (splitting the range there), so a demand read of a chunk being
  prefetched waits for that fetch and nothing is fetched twice.
* Demand reads go first: a worker does not start its next range while a demand fetch is
  in flight (for at most `DEMAND_YIELD` seconds, so prefetch cannot starve).
* `bandwidth_limit` (bytes/s, at least one chunk) is a token bucket every request waits on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nydus.errors import NydusError
from nydus.format.rafs import ChunkRef
from nydus.utils.ranges import merge_adjacent
from nydus.utils.ratelimit import TokenBucket

if TYPE_CHECKING:
    from nydus.storage.blobmeta import BlobMeta, ChunkDesc
    from nydus.storage.device import ChunkDevice, Key

__all__ = ["PREFETCH_ALL_RANGE", "PrefetchScheduler"]

log = logging.getLogger(__name__)

#: ranges of `prefetch_all` (the rest of every blob) are merged up to this size
PREFETCH_ALL_RANGE = 4 << 20
#: how long a worker holds back its next range while demand fetches are in flight
DEMAND_YIELD = 0.2


@dataclass(slots=True)
class _Job:
    kind: str  # "prefetch" (the list) or "prefetch-all"
    items: list[tuple[Key, BlobMeta, ChunkDesc]]


class PrefetchScheduler:
    """Background prefetch over one chunk device; `start()` returns at once."""

    def __init__(
        self,
        device: ChunkDevice,
        *,
        threads: int = 8,
        merging_size: int = 1 << 20,
        bandwidth_limit: int = 0,
    ) -> None:
        self.device = device
        self.threads = max(1, threads)
        self.merging_size = max(1, merging_size)
        # at least one chunk a second (as upstream); the bucket holds one range, so the
        # average holds from the first second on
        rate = max(bandwidth_limit, device.chunk_size) if bandwidth_limit > 0 else 0
        burst = max(device.chunk_size, min(self.merging_size, rate))
        self.bucket = TokenBucket(rate, burst) if rate else None
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._planning = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active = 0  # workers still running
        self.requests = 0
        self.bytes = 0
        self.done = threading.Event()

    # ---- planning -----------------------------------------------------------------------
    def start(self, refs: Callable[[], Iterable[ChunkRef]], prefetch_all: bool = False) -> None:
        """Plan `refs()` (called on the planner thread) and, with `prefetch_all`, then the
        remaining chunks of every blob; workers start on the first ranges at once."""
        self._planning = True
        self.device.cache_metrics.prefetch_started(self.threads)
        planner = threading.Thread(
            target=self._plan, args=(refs, prefetch_all), name="nydusd-prefetch-plan", daemon=True
        )
        self._threads.append(planner)
        self._active = self.threads
        for i in range(self.threads):
            t = threading.Thread(target=self._work, name=f"nydusd-prefetch-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        planner.start()

    def run(self, refs: Iterable[ChunkRef]) -> int:
        """Plan and fetch `refs` on this thread; the uncompressed bytes made ready."""
        order, per_blob = self._collect(refs)
        made = 0
        for bi in order:
            for job in self._jobs_for("prefetch", list(per_blob[bi].values()), self.merging_size):
                made += self._run(job)
        return made

    def _collect(
        self, refs: Iterable[ChunkRef]
    ) -> tuple[list[int], dict[int, dict[int, tuple[Key, BlobMeta, ChunkDesc]]]]:
        """Distinct chunks per blob; blobs in the order `refs` first names them."""
        order: list[int] = []
        per_blob: dict[int, dict[int, tuple[Key, BlobMeta, ChunkDesc]]] = {}
        for ref in refs:
            if self._stop.is_set():
                break
            item = self.device.describe(ref)
            d = per_blob.get(ref.blob_index)
            if d is None:
                d = per_blob[ref.blob_index] = {}
                order.append(ref.blob_index)
            d.setdefault(item[2].index, item)
        return order, per_blob

    def _plan(self, refs: Callable[[], Iterable[ChunkRef]], prefetch_all: bool) -> None:
        try:
            order, per_blob = self._collect(refs())
            for bi in order:
                items = list(per_blob[bi].values())
                self._queue(self._jobs_for("prefetch", items, self.merging_size))
            if prefetch_all:
                blobs = [b.blob_index for b in self.device.sb.blobs]
                limit = max(self.merging_size, PREFETCH_ALL_RANGE)
                for bi in order + [b for b in blobs if b not in per_blob]:
                    if self._stop.is_set():
                        return
                    self._queue(self._jobs_for("prefetch-all", self.device.blob_items(bi), limit))
        except NydusError as exc:
            log.warning("prefetch planning stopped: %s", exc)
        except Exception:  # a planning bug must not kill the daemon
            log.exception("prefetch planning failed")
        finally:
            with self._cond:
                self._planning = False
                self._cond.notify_all()

    def _jobs_for(
        self, kind: str, items: list[tuple[Key, BlobMeta, ChunkDesc]], limit: int
    ) -> list[_Job]:
        """The chunks not at hand yet, in blob order, merged into ranges of `limit` bytes."""
        todo = [it for it in items if not self.device.has_chunk(it[0], it[2])]
        groups = merge_adjacent(
            todo, lambda it: (it[2].compressed_offset, it[2].compressed_end), limit
        )
        return [_Job(kind, g) for g in groups]

    def _queue(self, jobs: list[_Job]) -> None:
        with self._cond:
            self._jobs.extend(jobs)
            self._cond.notify_all()

    # ---- fetching -----------------------------------------------------------------------
    def _next(self) -> _Job | None:
        with self._cond:
            while not self._jobs:
                if not self._planning or self._stop.is_set():
                    return None
                self._cond.wait(0.5)
            return self._jobs.popleft()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                job = self._next()
                if job is None:
                    break
                self._yield_to_demand()
                try:
                    self._run(job)
                except Exception:  # a worker must not die of one bad range (or shutdown)
                    if not self._stop.is_set():
                        log.exception("prefetch of a range failed")
        finally:
            self._worker_done()

    def _yield_to_demand(self) -> None:
        deadline = time.monotonic() + DEMAND_YIELD
        while self.device.demand_fetches > 0 and time.monotonic() < deadline:
            if self._stop.wait(0.005):
                return

    def _run(self, job: _Job) -> int:
        """Fetch what of `job` is still wanted; the uncompressed bytes fetched."""
        claimed = self.device.claim(job.items)
        if not claimed:
            return 0
        made = 0
        # chunks someone else holds split the range: fetch what is left, never over them
        groups = merge_adjacent(
            claimed, lambda p: (p.desc.compressed_offset, p.desc.compressed_end), 1 << 62
        )
        for i, group in enumerate(groups):
            size = max(p.desc.compressed_end for p in group) - group[0].desc.compressed_offset
            if self.bucket is not None and not self.bucket.take(size, self._stop):
                self.device.abandon([p for g in groups[i:] for p in g])
                return made
            self.device.fetch_claimed(group, job.kind)
            self.requests += 1
            self.bytes += size
            made += sum(p.desc.uncompressed_size for p in group if p.future.exception() is None)
        return made

    def _worker_done(self) -> None:
        with self._cond:
            self._active -= 1
            last = self._active == 0
        if last:
            self.device.cache_metrics.prefetch_finished()
            log.info("prefetch finished: %d requests, %d bytes", self.requests, self.bytes)
            self.done.set()

    def close(self, wait: float = 1.0) -> None:
        """Stop: queued ranges are dropped; workers finish the request they are in (waiting
        up to `wait` seconds for them)."""
        self._stop.set()
        with self._cond:
            self._jobs.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + wait
        for t in self._threads:
            if t is not threading.current_thread() and t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
