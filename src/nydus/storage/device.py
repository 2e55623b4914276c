"""The chunk device: file reads -> chunks -> cache -> backend -> decompress -> verify -> cache.

* Exactly one backend fetch per chunk however many threads want it at once (an in-flight
  map of futures keyed by (blob index, chunk index)).
* The chunks one read needs that are adjacent in a blob's compressed view are fetched with
  one backend read (merged up to the configured batch size).
* With `validate`, a chunk whose digest does not match raises DigestMismatch naming the
  blob and chunk; such data is never returned and never cached.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Iterable, Sequence

from nydus.errors import DigestMismatch, FormatError, NydusError, StorageError
from nydus.format.rafs import ChunkRef, RafsSuper
from nydus.storage.backend import BlobBackend
from nydus.storage.blobmeta import BlobMeta, ChunkDesc, load_blob_meta
from nydus.storage.cache import BlobCache, CacheMetrics

__all__ = ["ChunkDevice"]

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (blob index, chunk index)
MIB = 1 << 20


class _Lru:
    """A small byte-bounded LRU of decompressed chunks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._d: OrderedDict[Key, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> bytes | None:
        with self._lock:
            data = self._d.get(key)
            if data is not None:
                self._d.move_to_end(key)
            return data

    def put(self, key: Key, data: bytes) -> None:
        if self.capacity <= 0 or len(data) > self.capacity:
            return
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._d[key] = data
            self.used += len(data)
            while self.used > self.capacity:
                _, ev = self._d.popitem(last=False)
                self.used -= len(ev)


class ChunkDevice:
    """Serves file data of a RAFS filesystem from its blobs."""

    def __init__(self, sb: RafsSuper, backend: BlobBackend, *, cache_dir: str | None = None,
                 validate: bool = False, cache_validate: bool = False,
                 batch_size: int = MIB, memory_cache: int = 32 * MIB) -> None:
        self.sb = sb
        self.backend = backend
        self.cache_dir = cache_dir
        self.validate = validate
        self.cache_validate = cache_validate
        self.batch_size = max(batch_size, 1)
        self.chunk_size = sb.chunk_size
        self.metas: dict[int, BlobMeta] = {}
        self.caches: dict[int, BlobCache] = {}
        self.cache_metrics = CacheMetrics(cache_dir or "")
        self._meta_lock = threading.Lock()
        self._inflight: dict[Key, Future[bytes]] = {}
        self._inflight_lock = threading.Lock()
        self._lru = _Lru(memory_cache)
        self.fetches = 0  # number of backend data reads (for tests and metrics)

    # ---- set-up ------------------------------------------------------------------
    def load(self) -> None:
        """Load every blob's chunk metadata and open its cache (fails early on bad blobs)."""
        for blob in self.sb.blobs:
            self.meta(blob.blob_index)

    def meta(self, blob_index: int) -> BlobMeta:
        m = self.metas.get(blob_index)
        if m is not None:
            return m
        with self._meta_lock:
            m = self.metas.get(blob_index)
            if m is None:
                if not 0 <= blob_index < len(self.sb.blobs):
                    raise FormatError(f"chunk refers to blob {blob_index}, the bootstrap has "
                                      f"{len(self.sb.blobs)}")
                blob = self.sb.blobs[blob_index]
                m = load_blob_meta(self.sb, blob, self.backend, self.cache_dir)
                if self.cache_dir:
                    count = m.chunk_count
                    size = m.uncompressed_size
                    if self.sb.version == 5:
                        infos = [c for c in self.sb.chunk_table() if c.blob_index == blob_index]
                        if infos:
                            count = max(count, max(c.index for c in infos) + 1)
                            size = max(size, max(c.uncompressed_offset + c.uncompressed_size
                                                 for c in infos))
                    cache = BlobCache(self.cache_dir, blob.blob_id, size, count)
                    self.caches[blob_index] = cache
                    self.cache_metrics.underlying_files.append(cache.data_path)
                self.metas[blob_index] = m
            return m

    def close(self) -> None:
        for c in self.caches.values():
            c.close()
        self.caches.clear()

    # ---- reads ---------------------------------------------------------------------
    def read(self, chunks: Sequence[ChunkRef], file_size: int, offset: int, size: int) -> bytes:
        """`size` bytes (fewer at EOF) at `offset` of a file made of `chunks`."""
        if offset >= file_size or size <= 0:
            return b""
        end = min(offset + size, file_size)
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        if last >= len(chunks):
            raise FormatError(f"file of {file_size} bytes has only {len(chunks)} chunks")
        wanted = [chunks[i] for i in range(first, last + 1)]
        datas = self.get_chunks(wanted)
        out = bytearray()
        for i, ref in zip(range(first, last + 1), wanted):
            data = datas[(ref.blob_index, ref.ci_index)]
            base = i * cs
            lo = max(offset, base) - base
            hi = min(end, base + cs) - base
            if hi > len(data):
                raise StorageError(f"blob {self.sb.blobs[ref.blob_index].blob_id} chunk "
                                   f"{ref.ci_index}: {len(data)} bytes, file needs {hi}")
            out += data[lo:hi]
        return bytes(out)

    def get_chunks(self, refs: Iterable[ChunkRef], prefetch: bool = False) -> dict[Key, bytes]:
        """Decompressed, verified data of each distinct chunk in `refs`."""
        results: dict[Key, bytes] = {}
        owned: list[tuple[Key, BlobMeta, ChunkDesc, Future[bytes]]] = []
        waits: list[tuple[Key, Future[bytes]]] = []
        descs: dict[Key, tuple[BlobMeta, ChunkDesc]] = {}
        for ref in refs:
            key = (ref.blob_index, ref.ci_index)
            if key not in descs:
                meta = self.meta(ref.blob_index)
                descs[key] = (meta, meta.chunk(ref))
        hits = 0
        for key, (meta, desc) in descs.items():
            data = self._lru.get(key)
            if data is None:
                data = self._from_cache(key, meta, desc)
            if data is None:
                with self._inflight_lock:
                    fut = self._inflight.get(key)
                    if fut is not None:
                        waits.append((key, fut))
                        continue
                    # A finished fetch stores its data before leaving the in-flight map,
                    # so "not in flight and not stored" means nobody has it: fetch it.
                    if self._lru.get(key) is None and not self._cache_ready(key, desc):
                        fut = Future()
                        self._inflight[key] = fut
                        owned.append((key, meta, desc, fut))
                        continue
                data = self._lru.get(key)
                if data is None:
                    data = self._from_cache(key, meta, desc)
                if data is None:  # evicted or failed validation meanwhile
                    data = self._fetch_single(key, meta, desc)
                    results[key] = data
                    continue
            results[key] = data
            hits += 1
        if not prefetch:
            self.cache_metrics.record_request(len(descs), hits)
        if owned:
            self._fetch_owned(owned, prefetch)
        for key, _m, _d, fut in owned:
            results[key] = fut.result()
        for key, fut in waits:
            results[key] = fut.result()
        return results

    def _from_cache(self, key: Key, meta: BlobMeta, desc: ChunkDesc) -> bytes | None:
        cache = self.caches.get(key[0])
        if cache is None or not cache.is_ready(desc):
            return None
        data = cache.read(desc)
        if self.cache_validate and desc.digest is not None and \
                meta.digester.digest(data) != desc.digest:
            log.warning("blob %s chunk %d: cached data fails its digest; refetching",
                        meta.blob_id, desc.index)
            cache.invalidate(desc)
            return None
        self._lru.put(key, data)
        return data

    def _cache_ready(self, key: Key, desc: ChunkDesc) -> bool:
        cache = self.caches.get(key[0])
        return cache is not None and cache.is_ready(desc)

    def _fetch_single(self, key: Key, meta: BlobMeta, desc: ChunkDesc) -> bytes:
        """Fallback when cached data vanished between the check and the read."""
        fut: Future[bytes] = Future()
        with self._inflight_lock:
            other = self._inflight.get(key)
            if other is not None:
                fut = other
            else:
                self._inflight[key] = fut
                other = None
        if other is None:
            self._fetch_owned([(key, meta, desc, fut)], False)
        return fut.result()

    def _fetch_owned(self, owned: list[tuple[Key, BlobMeta, ChunkDesc, Future[bytes]]],
                     prefetch: bool) -> None:
        by_blob: dict[int, list[tuple[Key, BlobMeta, ChunkDesc, Future[bytes]]]] = {}
        for item in owned:
            by_blob.setdefault(item[0][0], []).append(item)
        try:
            for items in by_blob.values():
                items.sort(key=lambda it: it[2].compressed_offset)
                group = [items[0]]
                for it in items[1:]:
                    start = group[0][2].compressed_offset
                    prev_end = max(g[2].compressed_end for g in group)
                    if it[2].compressed_offset <= prev_end and \
                            it[2].compressed_end - start <= max(self.batch_size,
                                                                it[2].compressed_size):
                        group.append(it)
                    else:
                        self._fetch_group(group, prefetch)
                        group = [it]
                self._fetch_group(group, prefetch)
        finally:
            # never leave a waiter hanging, whatever went wrong above
            for key, _m, _d, fut in owned:
                if not fut.done():
                    self._finish(key, fut, exc=StorageError(f"chunk {key[1]} of blob index "
                                                            f"{key[0]} was not fetched"))

    def _finish(self, key: Key, fut: Future[bytes], data: bytes | None = None,
                exc: BaseException | None = None) -> None:
        with self._inflight_lock:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(data if data is not None else b"")

    def _fetch_group(self, group: list[tuple[Key, BlobMeta, ChunkDesc, Future[bytes]]],
                     prefetch: bool) -> None:
        meta = group[0][1]
        start = group[0][2].compressed_offset
        end = max(it[2].compressed_end for it in group)
        try:
            raw = self.backend.read(meta.blob_id, start, end - start)
        except NydusError as exc:
            for key, _m, _d, fut in group:
                self._finish(key, fut, exc=exc)
            return
        except Exception as exc:  # noqa: BLE001 - translate anything else to EIO
            err = StorageError(f"blob {meta.blob_id}: backend read failed: {exc}")
            for key, _m, _d, fut in group:
                self._finish(key, fut, exc=err)
            return
        self.fetches += 1
        if prefetch:
            self.cache_metrics.record_prefetch(len(raw), 1, len(group))
        log.debug("blob %s: fetched [%d, %d) for %d chunk(s)", meta.blob_id, start, end,
                  len(group))
        for key, _m, desc, fut in group:
            try:
                data = self._decode(meta, desc, raw[desc.compressed_offset - start:
                                                    desc.compressed_end - start])
            except NydusError as exc:
                log.error("%s", exc)
                self._finish(key, fut, exc=exc)
                continue
            cache = self.caches.get(key[0])
            if cache is not None:
                cache.store(desc, data)
            self._lru.put(key, data)
            self._finish(key, fut, data=data)

    def _decode(self, meta: BlobMeta, desc: ChunkDesc, piece: bytes) -> bytes:
        if desc.compressed:
            try:
                data = meta.compressor.decompress(piece, desc.uncompressed_size)
            except FormatError as exc:
                raise StorageError(f"blob {meta.blob_id} chunk {desc.index}: {exc}") from exc
        else:
            data = piece
            if len(data) != desc.uncompressed_size:
                raise StorageError(f"blob {meta.blob_id} chunk {desc.index}: stored "
                                   f"{len(data)} bytes, expected {desc.uncompressed_size}")
        if self.validate and desc.digest is not None:
            got = meta.digester.digest(data)
            if got != desc.digest:
                raise DigestMismatch(
                    f"blob {meta.blob_id} chunk {desc.index}: digest mismatch "
                    f"(expected {desc.digest.hex()}, got {got.hex()})")
        return data

    # ---- prefetch and state ------------------------------------------------------------
    def prefetch(self, refs: Iterable[ChunkRef]) -> int:
        """Fetch into the cache every chunk of `refs` not there yet; return the bytes fetched."""
        todo: list[ChunkRef] = []
        seen: set[Key] = set()
        for ref in refs:
            key = (ref.blob_index, ref.ci_index)
            if key in seen:
                continue
            seen.add(key)
            if not self._cache_ready(key, self.meta(ref.blob_index).chunk(ref)):
                todo.append(ref)
        total = 0
        batch: list[ChunkRef] = []
        batch_bytes = 0
        for ref in todo:
            batch.append(ref)
            batch_bytes += ref.uncompressed_size or self.chunk_size
            if batch_bytes >= self.batch_size:
                total += sum(len(d) for d in self.get_chunks(batch, prefetch=True).values())
                batch, batch_bytes = [], 0
        if batch:
            total += sum(len(d) for d in self.get_chunks(batch, prefetch=True).values())
        return total

    def cache_snapshot(self) -> dict[str, object]:
        ready = all(c.all_ready for c in self.caches.values()) if self.caches else False
        return self.cache_metrics.snapshot(len(self.caches), ready)

    def inflight_count(self) -> int:
        with self._inflight_lock:
            return len(self._inflight)

