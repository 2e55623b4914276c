"""The blob cache: per blob an uncompressed-view sparse file `<blob_id>.blob.data` plus a
persisted ready-chunk bitmap `<blob_id>.blob.data.chunk_map`, so a restarted daemon does not
fetch chunks it already has.

The chunk map file uses upstream nydusd's layout: a 4096-byte header (u32 magic
0x424D4150, u32 version 1, u32 magic2 0x434D4150, u32 all-ready marker 0x4D4D4150 once
every chunk is ready) followed by one bit per chunk, most significant bit first.
It is updated through a shared mapping, so the state survives even a SIGKILL.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time

from nydus.errors import StorageError
from nydus.storage.blobmeta import ChunkDesc

__all__ = ["BlobCache", "CacheMetrics", "ChunkMap"]

log = logging.getLogger(__name__)

MAP_MAGIC1 = 0x424D_4150
MAP_MAGIC2 = 0x434D_4150
MAP_ALL_READY = 0x4D4D_4150
MAP_HEADER_SIZE = 4096
_HEADER = struct.Struct("<IIII")


class ChunkMap:
    """Persistent ready bitmap for `count` chunks."""

    def __init__(self, path: str, count: int) -> None:
        if count <= 0:
            raise ValueError("chunk map needs at least one chunk")
        self.path = path
        self.count = count
        self.size = MAP_HEADER_SIZE + (count + 7) // 8
        self._lock = threading.Lock()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            fresh = st.st_size == 0
            if st.st_size not in (0, self.size):
                log.warning(
                    "chunk map %s has size %d, expected %d: resetting it",
                    path,
                    st.st_size,
                    self.size,
                )
                os.ftruncate(fd, 0)
                fresh = True
            if fresh:
                os.ftruncate(fd, self.size)
                os.pwrite(fd, _HEADER.pack(MAP_MAGIC1, 1, MAP_MAGIC2, 0), 0)
            self._mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        magic1, version, magic2, all_ready = _HEADER.unpack_from(self._mm, 0)
        if magic1 != MAP_MAGIC1 or (version >= 1 and magic2 != MAP_MAGIC2):
            log.warning("chunk map %s has a bad header: resetting it", path)
            self._mm[:] = bytes(self.size)
            _HEADER.pack_into(self._mm, 0, MAP_MAGIC1, 1, MAP_MAGIC2, 0)
            all_ready = 0
        if all_ready == MAP_ALL_READY:
            self.ready_count = count
        else:
            bits = self._mm[MAP_HEADER_SIZE:]
            self.ready_count = sum((b).bit_count() for b in bits if b)
            # ignore bits beyond `count` in the last byte
            self.ready_count = min(self.ready_count, count)

    @staticmethod
    def _mask(index: int) -> int:
        return 1 << (7 - (index & 7))

    def is_ready(self, index: int) -> bool:
        if self.ready_count >= self.count:
            return True
        if not 0 <= index < self.count:
            return False
        return bool(self._mm[MAP_HEADER_SIZE + (index >> 3)] & self._mask(index))

    def set_ready(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise StorageError(f"chunk map {self.path}: chunk index {index} >= {self.count}")
        pos = MAP_HEADER_SIZE + (index >> 3)
        with self._lock:
            cur = self._mm[pos]
            mask = self._mask(index)
            if cur & mask:
                return
            self._mm[pos] = cur | mask
            self.ready_count += 1
            if self.ready_count == self.count:
                _HEADER.pack_into(self._mm, 0, MAP_MAGIC1, 1, MAP_MAGIC2, MAP_ALL_READY)

    def clear(self, index: int) -> None:
        """Forget a chunk (its cached data turned out to be bad)."""
        if not 0 <= index < self.count:
            return
        pos = MAP_HEADER_SIZE + (index >> 3)
        with self._lock:
            if self.ready_count >= self.count:
                # the header claimed all-ready: materialise the bitmap first
                self._mm[MAP_HEADER_SIZE:] = b"\xff" * (self.size - MAP_HEADER_SIZE)
                _HEADER.pack_into(self._mm, 0, MAP_MAGIC1, 1, MAP_MAGIC2, 0)
            cur = self._mm[pos]
            mask = self._mask(index)
            if cur & mask:
                self._mm[pos] = cur & ~mask
                self.ready_count = min(self.ready_count, self.count) - 1

    @property
    def all_ready(self) -> bool:
        return self.ready_count >= self.count

    def close(self) -> None:
        with self._lock:
            try:
                self._mm.flush()
                self._mm.close()
            except (ValueError, OSError):
                pass


class BlobCache:
    """Cached uncompressed view of one blob; thread-safe."""

    def __init__(self, work_dir: str, blob_id: str, data_size: int, chunk_count: int) -> None:
        self.blob_id = blob_id
        self.data_path = os.path.join(work_dir, f"{blob_id}.blob.data")
        self.map_path = f"{self.data_path}.chunk_map"
        try:
            self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if data_size and os.fstat(self._fd).st_size < data_size:
                os.ftruncate(self._fd, data_size)
            self.map: ChunkMap | None = (
                ChunkMap(self.map_path, chunk_count) if chunk_count else None
            )
        except OSError as exc:
            raise StorageError(
                f"blob cache: cannot create cache files for blob {blob_id} in "
                f"{work_dir}: {exc.strerror}"
            ) from exc

    def is_ready(self, desc: ChunkDesc) -> bool:
        return self.map is not None and self.map.is_ready(desc.index)

    def read(self, desc: ChunkDesc) -> bytes:
        try:
            data = os.pread(self._fd, desc.uncompressed_size, desc.uncompressed_offset)
        except OSError as exc:
            raise StorageError(f"blob cache: reading {self.data_path} failed: {exc}") from exc
        if len(data) != desc.uncompressed_size:
            raise StorageError(
                f"blob cache: short read of chunk {desc.index} from {self.data_path}"
            )
        return data

    def read_range(self, desc: ChunkDesc, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` inside a ready chunk."""
        try:
            data = os.pread(self._fd, size, desc.uncompressed_offset + offset)
        except OSError as exc:
            raise StorageError(f"blob cache: reading {self.data_path} failed: {exc}") from exc
        if len(data) != size:
            raise StorageError(
                f"blob cache: short read of chunk {desc.index} from {self.data_path}"
            )
        return data

    def will_need(self, desc: ChunkDesc) -> None:
        """Hint the kernel to start reading a chunk of the cache file (sequential reads)."""
        try:
            os.posix_fadvise(
                self._fd, desc.uncompressed_offset, desc.uncompressed_size, os.POSIX_FADV_WILLNEED
            )
        except OSError:
            pass

    def store(self, desc: ChunkDesc, data: bytes) -> None:
        try:
            os.pwrite(self._fd, data, desc.uncompressed_offset)
        except OSError as exc:
            log.warning(
                "blob cache: writing chunk %d of %s failed: %s", desc.index, self.blob_id, exc
            )
            return
        if self.map is not None:
            self.map.set_ready(desc.index)

    def invalidate(self, desc: ChunkDesc) -> None:
        if self.map is not None:
            self.map.clear(desc.index)

    @property
    def all_ready(self) -> bool:
        return self.map is None or self.map.all_ready

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        try:
            os.close(self._fd)
        except OSError:
            pass


class CacheMetrics:
    """Counters in the shape of `GET /api/v1/metrics/blobcache`."""

    def __init__(self, store_path: str = "") -> None:
        self._lock = threading.Lock()
        self.store_path = store_path
        self.underlying_files: list[str] = []
        self.partial_hits = 0
        self.whole_hits = 0
        self.total = 0
        self.prefetch_data_amount = 0
        self.prefetch_requests_count = 0
        self.prefetch_workers = 0
        self.prefetch_unmerged_chunks = 0
        self.prefetch_cumulative_time_millis = 0
        self.prefetch_begin_time = 0.0
        self.prefetch_end_time = 0.0
        self.buffered_backend_size = 0
        #: demand reads (and their chunks) answered with data prefetch brought in
        self.prefetch_served_reads = 0
        self.prefetch_served_chunks = 0

    def record_request(self, chunks: int, hits: int) -> None:
        with self._lock:
            self.total += 1
            if chunks and hits == chunks:
                self.whole_hits += 1
            elif hits:
                self.partial_hits += 1

    def record_prefetch(self, nbytes: int, requests: int, chunks: int) -> None:
        with self._lock:
            self.prefetch_data_amount += nbytes
            self.prefetch_requests_count += requests
            self.prefetch_unmerged_chunks += chunks

    def record_served(self, chunks: int) -> None:
        with self._lock:
            self.prefetch_served_reads += 1
            self.prefetch_served_chunks += chunks

    def prefetch_started(self, workers: int) -> None:
        with self._lock:
            self.prefetch_workers = workers
            self.prefetch_begin_time = time.time()

    def prefetch_finished(self) -> None:
        with self._lock:
            self.prefetch_end_time = time.time()
            if self.prefetch_begin_time:
                self.prefetch_cumulative_time_millis += int(
                    (self.prefetch_end_time - self.prefetch_begin_time) * 1000
                )

    def snapshot(self, entries_count: int, data_all_ready: bool) -> dict[str, object]:
        with self._lock:
            b, e = self.prefetch_begin_time, self.prefetch_end_time
            return {
                "id": "",
                "underlying_files": list(self.underlying_files),
                "store_path": self.store_path,
                "partial_hits": self.partial_hits,
                "whole_hits": self.whole_hits,
                "total": self.total,
                "entries_count": entries_count,
                "prefetch_data_amount": self.prefetch_data_amount,
                "prefetch_requests_count": self.prefetch_requests_count,
                "prefetch_workers": self.prefetch_workers,
                "prefetch_unmerged_chunks": self.prefetch_unmerged_chunks,
                "prefetch_cumulative_time_millis": self.prefetch_cumulative_time_millis,
                "prefetch_begin_time_secs": int(b),
                "prefetch_begin_time_millis": int((b % 1) * 1000),
                "prefetch_end_time_secs": int(e),
                "prefetch_end_time_millis": int((e % 1) * 1000),
                "buffered_backend_size": self.buffered_backend_size,
                "data_all_ready": data_all_ready,
                "prefetch_served_reads": self.prefetch_served_reads,
                "prefetch_served_chunks": self.prefetch_served_chunks,
            }
