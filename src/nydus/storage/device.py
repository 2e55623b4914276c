"""The chunk device: file reads -> chunks -> cache -> backend -> decompress -> verify -> cache.

* Exactly one backend fetch per chunk however many threads want it at once (an in-flight
  map of futures keyed by (blob index, chunk index)).
* The chunks one read needs that are adjacent in a blob's compressed view are fetched with
  one backend read (merged up to the configured batch size).
* With `validate`, a chunk whose digest does not match raises DigestMismatch naming the
  blob and chunk; such data is never returned and never cached. Chunks found in the cache
  file are verified too, once per chunk per device (a bitmap in memory): one that fails is
  dropped from the cache and fetched again (`cache_validate` verifies every cache read).
* Prefetch (`storage/prefetch.py`) claims chunks through the same in-flight map (`claim`,
  `fetch_claimed`), so demand reads, read amplification and prefetch never fetch a chunk
  twice: whoever comes second waits for (or skips) the fetch under way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from nydus.errors import DigestMismatch, FormatError, NydusError, StorageError
from nydus.format.rafs import ChunkRef, RafsSuper
from nydus.format.v6 import BlobInfo
from nydus.storage.backend import BlobBackend
from nydus.storage.blobmeta import BlobMeta, ChunkDesc, check_blob_info, load_blob_meta
from nydus.storage.cache import BlobCache, CacheMetrics
from nydus.utils.lru import Lru

if TYPE_CHECKING:
    from nydus.storage.prefetch import PrefetchScheduler

__all__ = ["ChunkDevice", "Key", "PendingFetch"]

log = logging.getLogger(__name__)

MIB = 1 << 20


class Key(NamedTuple):
    """A chunk of the filesystem: its blob's index in the blob table and its index in that
    blob's chunk-info array."""

    blob_index: int
    chunk_index: int


@dataclass(frozen=True, slots=True)
class PendingFetch:
    """A chunk the calling thread has taken on to fetch: every other reader of `key` waits
    on `future`, which this thread completes (data or error) whatever happens."""

    key: Key
    meta: BlobMeta
    desc: ChunkDesc
    future: Future[bytes]


def _key(ref: ChunkRef) -> Key:
    return Key(ref.blob_index, ref.ci_index)


class _ChunkBits:
    """The chunks known good (verified since this device started), one bit per chunk."""

    def __init__(self) -> None:
        self._bits: dict[int, bytearray] = {}

    def __contains__(self, key: Key) -> bool:
        bits = self._bits.get(key.blob_index)
        i = key.chunk_index
        return bits is not None and i >> 3 < len(bits) and bool(bits[i >> 3] & (1 << (i & 7)))

    def add(self, key: Key) -> None:
        bits = self._bits.setdefault(key.blob_index, bytearray())
        i = key.chunk_index
        if i >> 3 >= len(bits):
            bits.extend(bytes((i >> 3) + 1 - len(bits)))
        bits[i >> 3] |= 1 << (i & 7)


class ChunkDevice:
    """Serves file data of a RAFS filesystem from its blobs."""

    def __init__(
        self,
        sb: RafsSuper,
        backend: BlobBackend,
        *,
        cache_dir: str | None = None,
        validate: bool = False,
        cache_validate: bool = False,
        batch_size: int = MIB,
        memory_cache: int = 32 * MIB,
        readahead_chunks: int = 2,
    ) -> None:
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
        self._lru: Lru[Key, bytes] = Lru(memory_cache, size=len)
        self._verified = _ChunkBits()  # with `validate`: cache file chunks checked once
        self.fetches = 0  # number of backend data reads (for tests and metrics)
        #: chunks fetched ahead, in the background, when a file is read sequentially
        self.readahead_chunks = readahead_chunks
        self._ra_pool: ThreadPoolExecutor | None = None
        self._ra_lock = threading.Lock()
        #: chunks prefetch brought in (to count the demand reads it served)
        self._prefetched: set[Key] = set()
        self._demand = 0  # demand fetches under way (prefetch holds back while > 0)
        self._demand_lock = threading.Lock()
        self._prefetcher: PrefetchScheduler | None = None

    # ---- set-up ------------------------------------------------------------------
    def load(self) -> None:
        """Load every blob's chunk metadata and open its cache now (fails early on bad
        blobs); otherwise each blob's is loaded on its first use."""
        for blob in self.sb.blobs:
            self.meta(blob.blob_index)

    def check(self) -> None:
        """Check the blob table without fetching anything: FormatError naming a blob we
        cannot read, StorageError for one the backend knows is missing (a local file)."""
        for blob in self.sb.blobs:
            check_blob_info(self.sb.version, blob)
            self.backend.probe(blob.blob_id)

    def meta(self, blob_index: int) -> BlobMeta:
        m = self.metas.get(blob_index)
        if m is not None:
            return m
        with self._meta_lock:
            m = self.metas.get(blob_index)
            if m is None:
                if not 0 <= blob_index < len(self.sb.blobs):
                    raise FormatError(
                        f"chunk refers to blob {blob_index}, the bootstrap has {len(self.sb.blobs)}"
                    )
                blob = self.sb.blobs[blob_index]
                m = self._load_meta(blob)
                if self.cache_dir:
                    count = m.chunk_count
                    size = m.uncompressed_size
                    if self.sb.version == 5:
                        infos = [c for c in self.sb.chunk_table() if c.blob_index == blob_index]
                        if infos:
                            count = max(count, max(c.index for c in infos) + 1)
                            size = max(
                                size, *(c.uncompressed_offset + c.uncompressed_size for c in infos)
                            )
                    cache = BlobCache(self.cache_dir, blob.blob_id, size, count)
                    self.caches[blob_index] = cache
                    self.cache_metrics.underlying_files.append(cache.data_path)
                self.metas[blob_index] = m
            return m

    def _load_meta(self, blob: BlobInfo) -> BlobMeta:
        """A blob's chunk metadata, on its first use. Data that fails its check (a ToC or
        digest section mismatch, a bad CI array) is fetched again up to the backend's
        `retry_limit` times, like a chunk; then every read of the blob fails with EIO until
        a later read loads it."""
        tries = int(getattr(self.backend, "retry_limit", 0))
        for attempt in range(tries + 1):
            try:
                return load_blob_meta(
                    self.sb,
                    blob,
                    self.backend,
                    self.cache_dir,
                    want_digests=self.validate or self.cache_validate,
                )
            except FormatError as exc:
                if attempt == tries:
                    err: NydusError = exc
                    break
                log.warning(
                    "blob %s: chunk metadata: %s; fetching it again (%d/%d)",
                    blob.blob_id,
                    exc,
                    attempt + 1,
                    tries,
                )
            except NydusError as exc:  # the backend already retried what it could
                err = exc
                break
        log.warning(
            "blob %s: cannot load its chunk metadata, the read fails with EIO: %s",
            blob.blob_id,
            err,
        )
        raise err

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
        with self._ra_lock:
            pool, self._ra_pool = self._ra_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
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
        spans: list[tuple[ChunkRef, int, int, bytes | None]] = []
        missing: list[ChunkRef] = []
        for i in range(first, last + 1):
            ref = chunks[i]
            base = i * cs
            lo, hi = max(offset, base) - base, min(end, base + cs) - base
            piece = self._cached_range(ref, lo, hi)
            if piece is None:
                missing.append(ref)
            spans.append((ref, lo, hi, piece))
        self.cache_metrics.record_request(len(spans), len(spans) - len(missing))
        self._maybe_read_ahead(chunks, first, last)
        datas = self.get_chunks(missing) if missing else {}
        self._count_served(chunks[first : last + 1])
        pieces = []
        for ref, lo, hi, piece in spans:
            if piece is None:
                data = datas[_key(ref)]
                if hi > len(data):
                    raise StorageError(
                        f"blob {self.sb.blobs[ref.blob_index].blob_id} chunk "
                        f"{ref.ci_index}: {len(data)} bytes, file needs {hi}"
                    )
                piece = data[lo:hi]
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_memory(
        self, chunks: Sequence[ChunkRef], file_size: int, offset: int, size: int
    ) -> bytes | None:
        """Like `read`, but only from decompressed chunks held in memory; None if any is
        not there. Never blocks on I/O, so callers may use it on an event loop."""
        end = min(offset + size, file_size)
        if offset >= end:
            return None
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        if last >= len(chunks):
            return None
        pieces = []
        for i in range(first, last + 1):
            ref = chunks[i]
            data = self._lru.get(_key(ref))
            base = i * cs
            lo, hi = max(offset, base) - base, min(end, base + cs) - base
            if data is None or hi > len(data):
                return None
            pieces.append(data[lo:hi])
        self.cache_metrics.record_request(len(pieces), len(pieces))
        self._maybe_read_ahead(chunks, first, last)
        self._count_served(chunks[first : last + 1])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _count_served(self, refs: Sequence[ChunkRef]) -> None:
        if self._prefetched:
            n = sum(1 for r in refs if _key(r) in self._prefetched)
            if n:
                self.cache_metrics.record_served(n)

    def _maybe_read_ahead(self, chunks: Sequence[ChunkRef], first: int, last: int) -> None:
        """Keep the next chunks of a file being read sequentially on their way."""
        if (
            self.readahead_chunks
            and last + 1 < len(chunks)
            and (first == 0 or self._available(chunks[first - 1]))
        ):
            self._read_ahead(chunks[last + 1 : last + 1 + self.readahead_chunks])

    def _available(self, ref: ChunkRef) -> bool:
        """Whether a chunk is in memory, in the cache file or being fetched."""
        key = _key(ref)
        if key in self._inflight or self._lru.get(key) is not None:
            return True
        cache = self.caches.get(ref.blob_index)
        return cache is not None and cache.is_ready(self.meta(ref.blob_index).chunk(ref))

    def _read_ahead(self, refs: Sequence[ChunkRef]) -> None:
        """Fetch the chunks following a sequential read in the background (or, when they
        are in the cache file already, ask the kernel to start reading them)."""
        todo = []
        for r in refs:
            key = _key(r)
            if key in self._inflight or self._lru.get(key) is not None:
                continue
            cache = self.caches.get(r.blob_index)
            if cache is not None:
                desc = self.meta(r.blob_index).chunk(r)
                if cache.is_ready(desc):
                    cache.will_need(desc)
                    continue
            todo.append(r)
        if not todo:
            return
        with self._ra_lock:
            if self._ra_pool is None:
                self._ra_pool = ThreadPoolExecutor(
                    max_workers=2, thread_name_prefix="nydusd-readahead"
                )
            pool = self._ra_pool
        try:
            pool.submit(self._read_ahead_job, todo)
        except RuntimeError:  # shut down
            pass

    def _read_ahead_job(self, refs: list[ChunkRef]) -> None:
        try:
            self.get_chunks(refs, kind="readahead")
        except NydusError as exc:
            log.debug("read-ahead failed: %s", exc)

    def cached_range(self, ref: ChunkRef, lo: int, hi: int) -> bytes | None:
        """Bytes [lo, hi) of a chunk from memory or the cache file if it is there (no fetch);
        None otherwise (then `get_chunks`)."""
        return self._cached_range(ref, lo, hi)

    def in_memory(self, ref: ChunkRef) -> bytes | None:
        """The chunk's decompressed data if it is held in memory (never blocks)."""
        return self._lru.get(_key(ref))

    def _cached_range(self, ref: ChunkRef, lo: int, hi: int) -> bytes | None:
        """Bytes [lo, hi) of a chunk straight from memory or the cache file, if it is there.

        With `cache_validate` whole chunks must be checked, so the cache file is read
        through `get_chunks` instead; with `validate` a chunk not verified yet is read whole
        and verified here.
        """
        key = _key(ref)
        data = self._lru.get(key)
        if data is not None:
            return data[lo:hi] if hi <= len(data) else None
        if self.cache_dir is None or self.cache_validate:
            return None
        meta = self.meta(ref.blob_index)  # opens the blob's cache on first use
        desc = meta.chunk(ref)
        cache = self.caches.get(ref.blob_index)
        if cache is None or hi > desc.uncompressed_size or not cache.is_ready(desc):
            return None
        if self.validate and key not in self._verified:  # the whole chunk, checked once
            data = self._from_cache(key, meta, desc)
            return None if data is None else data[lo:hi]
        return cache.read_range(desc, lo, hi - lo)

    def get_chunks(self, refs: Iterable[ChunkRef], kind: str = "read") -> dict[Key, bytes]:
        """Decompressed, verified data of each distinct chunk in `refs`.

        `kind` is "read", "prefetch" (accounted in the prefetch metrics) or "readahead".
        """
        prefetch = kind == "prefetch"
        results: dict[Key, bytes] = {}
        owned: list[PendingFetch] = []
        waits: list[tuple[Key, Future[bytes]]] = []
        descs: dict[Key, tuple[BlobMeta, ChunkDesc]] = {}
        for ref in refs:
            key = _key(ref)
            if key not in descs:
                meta = self.meta(ref.blob_index)
                descs[key] = (meta, meta.chunk(ref))
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
                        owned.append(PendingFetch(key, meta, desc, fut))
                        continue
                data = self._lru.get(key)
                if data is None:
                    data = self._from_cache(key, meta, desc)
                if data is None:  # evicted or failed validation meanwhile
                    data = self._fetch_single(key, meta, desc)
                    results[key] = data
                    continue
            results[key] = data
        if owned:
            # amplified chunks only go to the caches: a failure among them does not fail
            # this read (it fails whoever reads that chunk later)
            demand = kind == "read"
            if demand:
                with self._demand_lock:
                    self._demand += 1
            try:
                self._fetch_owned(self._amplify(owned) if demand else owned, prefetch)
            finally:
                if demand:
                    with self._demand_lock:
                        self._demand -= 1
        for p in owned:
            results[p.key] = p.future.result()
        for key, fut in waits:
            results[key] = fut.result()
        return results

    def _amplify(self, owned: list[PendingFetch]) -> list[PendingFetch]:
        """Read amplification (`amplify_io` / `rafs.batch_size`): after each chunk a read
        fetches, also take the chunks that follow it in the blob while the whole range stays
        within `batch_size`, stopping at the first one already at hand. They are stored in
        the caches, so reading the next small files costs no extra backend request."""
        out = list(owned)
        taken = {p.key for p in owned}
        for p in owned:
            chunks = p.meta.chunks
            if chunks is None:
                continue
            for nxt in chunks[p.desc.index + 1 :]:
                nkey = Key(p.key.blob_index, nxt.index)
                if nkey in taken:
                    continue
                if nxt.compressed_end - p.desc.compressed_offset > self.batch_size or (
                    self.validate and nxt.digest is None
                ):
                    break
                with self._inflight_lock:
                    if (
                        nkey in self._inflight
                        or self._lru.get(nkey) is not None
                        or self._cache_ready(nkey, nxt)
                    ):
                        break
                    fut: Future[bytes] = Future()
                    self._inflight[nkey] = fut
                out.append(PendingFetch(nkey, p.meta, nxt, fut))
                taken.add(nkey)
        return out

    def _from_cache(self, key: Key, meta: BlobMeta, desc: ChunkDesc) -> bytes | None:
        cache = self.caches.get(key.blob_index)
        if cache is None or not cache.is_ready(desc):
            return None
        data = cache.read(desc)
        check = self.cache_validate or (self.validate and key not in self._verified)
        if check and desc.digest is not None:
            if meta.digester.digest(data) != desc.digest:
                log.warning(
                    "blob %s chunk %d: cached data fails its digest; refetching",
                    meta.blob_id,
                    desc.index,
                )
                cache.invalidate(desc)
                return None
            self._verified.add(key)
        self._lru.put(key, data)
        return data

    def _cache_ready(self, key: Key, desc: ChunkDesc) -> bool:
        cache = self.caches.get(key.blob_index)
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
            self._fetch_owned([PendingFetch(key, meta, desc, fut)], False)
        return fut.result()

    def _fetch_owned(self, owned: list[PendingFetch], prefetch: bool) -> None:
        by_blob: dict[int, list[PendingFetch]] = {}
        for p in owned:
            by_blob.setdefault(p.key.blob_index, []).append(p)
        try:
            for items in by_blob.values():
                items.sort(key=lambda p: p.desc.compressed_offset)
                group = [items[0]]
                for p in items[1:]:
                    start = group[0].desc.compressed_offset
                    prev_end = max(g.desc.compressed_end for g in group)
                    if (
                        p.desc.compressed_offset <= prev_end
                        and p.desc.compressed_end - start
                        <= max(self.batch_size, p.desc.compressed_size)
                    ):
                        group.append(p)
                    else:
                        self._fetch_group(group, prefetch)
                        group = [p]
                self._fetch_group(group, prefetch)
        finally:
            # never leave a waiter hanging, whatever went wrong above
            for p in owned:
                if not p.future.done():
                    self._finish(
                        p,
                        exc=StorageError(
                            f"chunk {p.key.chunk_index} of blob index {p.key.blob_index} "
                            "was not fetched"
                        ),
                    )

    def _finish(
        self, p: PendingFetch, data: bytes | None = None, exc: BaseException | None = None
    ) -> None:
        with self._inflight_lock:
            if self._inflight.get(p.key) is p.future:
                del self._inflight[p.key]
        if exc is not None:
            p.future.set_exception(exc)
        else:
            p.future.set_result(data if data is not None else b"")

    def _fetch_group(self, group: list[PendingFetch], prefetch: bool, memory: bool = True) -> None:
        meta = group[0].meta
        start = group[0].desc.compressed_offset
        end = max(p.desc.compressed_end for p in group)
        try:
            raw = self.backend.read(meta.blob_id, start, end - start)
        except NydusError as exc:
            for p in group:
                self._finish(p, exc=exc)
            return
        except Exception as exc:  # noqa: BLE001 - translate anything else to EIO
            err = StorageError(f"blob {meta.blob_id}: backend read failed: {exc}")
            for p in group:
                self._finish(p, exc=err)
            return
        self.fetches += 1
        if prefetch:
            self.cache_metrics.record_prefetch(len(raw), 1, len(group))
        log.debug("blob %s: fetched [%d, %d) for %d chunk(s)", meta.blob_id, start, end, len(group))
        for p in group:
            desc = p.desc
            try:
                data = self._decode(
                    meta, desc, raw[desc.compressed_offset - start : desc.compressed_end - start]
                )
            except NydusError as exc:
                try:
                    data = self._refetch(meta, desc, exc)
                except NydusError as final:
                    self._finish(p, exc=final)
                    continue
            cache = self.caches.get(p.key.blob_index)
            if cache is not None:
                cache.store(desc, data)
            if self.validate and desc.digest is not None:
                self._verified.add(p.key)  # `_decode` checked it
            if memory:
                self._lru.put(p.key, data)
            if prefetch:
                self._prefetched.add(p.key)
            self._finish(p, data=data)

    def _refetch(self, meta: BlobMeta, desc: ChunkDesc, exc: NydusError) -> bytes:
        """A chunk whose fetched data fails (digest, decompression) is read again on its
        own, up to the backend's `retry_limit` times (a byte flipped in transit is not a
        broken blob); then the read fails, logged at WARNING with blob, offset and cause."""
        tries = int(getattr(self.backend, "retry_limit", 0))
        for attempt in range(1, tries + 1):
            log.warning("%s; fetching it again (%d/%d)", exc, attempt, tries)
            try:
                raw = self.backend.read(meta.blob_id, desc.compressed_offset, desc.compressed_size)
                return self._decode(meta, desc, raw)
            except NydusError as again:
                exc = again
        log.warning(
            "blob %s chunk %d (compressed offset %d): read fails with EIO: %s",
            meta.blob_id,
            desc.index,
            desc.compressed_offset,
            exc,
        )
        raise exc

    def _decode(self, meta: BlobMeta, desc: ChunkDesc, piece: bytes) -> bytes:
        if desc.compressed:
            try:
                data = meta.compressor.decompress(piece, desc.uncompressed_size)
            except FormatError as exc:
                raise StorageError(f"blob {meta.blob_id} chunk {desc.index}: {exc}") from exc
        else:
            data = piece
            if len(data) != desc.uncompressed_size:
                raise StorageError(
                    f"blob {meta.blob_id} chunk {desc.index}: stored "
                    f"{len(data)} bytes, expected {desc.uncompressed_size}"
                )
        if self.validate and desc.digest is not None:
            got = meta.digester.digest(data)
            if got != desc.digest:
                raise DigestMismatch(
                    f"blob {meta.blob_id} chunk {desc.index}: digest mismatch "
                    f"(expected {desc.digest.hex()}, got {got.hex()})"
                )
        return data

    # ---- prefetch and state ------------------------------------------------------------
    @property
    def demand_fetches(self) -> int:
        """Backend fetches for demand reads under way right now."""
        return self._demand

    def describe(self, ref: ChunkRef) -> tuple[Key, BlobMeta, ChunkDesc]:
        meta = self.meta(ref.blob_index)
        return _key(ref), meta, meta.chunk(ref)

    def blob_items(self, blob_index: int) -> list[tuple[Key, BlobMeta, ChunkDesc]]:
        """Every chunk of a blob (none for a blob without a chunk table: RAFS v5)."""
        meta = self.meta(blob_index)
        return [(Key(blob_index, d.index), meta, d) for d in meta.chunks or []]

    def has_chunk(self, key: Key, desc: ChunkDesc) -> bool:
        """In memory, in the cache file or being fetched."""
        return key in self._inflight or key in self._lru or self._cache_ready(key, desc)

    def claim(self, items: Iterable[tuple[Key, BlobMeta, ChunkDesc]]) -> list[PendingFetch]:
        """Take on fetching each chunk nobody holds or has in flight; the caller must then
        `fetch_claimed` (or `abandon`) every one returned."""
        out = []
        with self._inflight_lock:
            for key, meta, desc in items:
                if key in self._inflight or key in self._lru or self._cache_ready(key, desc):
                    continue
                fut: Future[bytes] = Future()
                self._inflight[key] = fut
                out.append(PendingFetch(key, meta, desc, fut))
        return out

    def fetch_claimed(self, group: list[PendingFetch], kind: str = "prefetch") -> None:
        """Fetch claimed chunks of one blob that are adjacent (one backend request), into
        the caches. `kind` "prefetch-all" keeps them out of the memory cache (a whole
        image would only flush it)."""
        try:
            self._fetch_group(group, True, memory=kind != "prefetch-all" or not self.caches)
        finally:
            for p in group:
                if not p.future.done():
                    self._finish(p, exc=StorageError(f"chunk {p.key.chunk_index} not fetched"))

    def abandon(self, pending: list[PendingFetch]) -> None:
        """Give claimed chunks up unfetched (prefetch stopping): their waiters fail."""
        for p in pending:
            if not p.future.done():
                self._finish(p, exc=StorageError("prefetch stopped before fetching the chunk"))

    def start_prefetch(
        self,
        refs: Callable[[], Iterable[ChunkRef]],
        *,
        threads: int,
        merging_size: int,
        bandwidth_limit: int = 0,
        prefetch_all: bool = False,
    ) -> PrefetchScheduler:
        """Prefetch `refs()` (and with `prefetch_all` every other chunk) in the background."""
        from nydus.storage.prefetch import PrefetchScheduler

        sched = PrefetchScheduler(
            self, threads=threads, merging_size=merging_size, bandwidth_limit=bandwidth_limit
        )
        self._prefetcher = sched
        sched.start(refs, prefetch_all)
        return sched

    def prefetch(self, refs: Iterable[ChunkRef]) -> int:
        """Fetch into the caches every chunk of `refs` not there yet, in merged ranges of up
        to `batch_size`, on this thread; the uncompressed bytes made ready."""
        from nydus.storage.prefetch import PrefetchScheduler

        return PrefetchScheduler(self, threads=1, merging_size=self.batch_size).run(refs)

    def cache_snapshot(self) -> dict[str, object]:
        ready = all(c.all_ready for c in self.caches.values()) if self.caches else False
        return self.cache_metrics.snapshot(len(self.caches), ready)

    def inflight_count(self) -> int:
        with self._inflight_lock:
            return len(self._inflight)
