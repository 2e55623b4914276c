"""A blob's uncompressed view: byte X is byte X of the blob's uncompressed address space.

Chunks sit at their (4 KiB-aligned) uncompressed offsets; gaps between them read as zeros.
This is what the kernel's EROFS reads as the blob's device in the erofs driver, so every
byte goes through the chunk device: memory -> cache file -> backend -> decompress ->
digest check -> caches. The chunk index is built on the blob's first read (loading its
chunk-info array then, not at mount), and checked: a chunk that is not 4 KiB-aligned,
overlaps another or lies beyond the blob's size makes every read of the blob fail.

The seam for prefetch: `BlobViews.read(blob_index, offset, size)` is the one read path of
the erofs driver (the daemon sees blob ranges, not files).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from nydus.errors import FormatError, StorageError
from nydus.format.rafs import ChunkRef
from nydus.storage.blobmeta import ChunkDesc
from nydus.storage.device import ChunkDevice, Key

__all__ = ["BLOCK", "BlobIndex", "BlobViews"]

log = logging.getLogger(__name__)

BLOCK = 4096


@dataclass(frozen=True, slots=True)
class BlobIndex:
    """The chunks of one blob sorted by uncompressed offset, for binary search."""

    blob_index: int
    size: int
    starts: list[int]
    chunks: list[ChunkDesc]

    @classmethod
    def build(cls, blob_index: int, blob_id: str, size: int, descs: list[ChunkDesc]) -> BlobIndex:
        chunks = sorted(
            (d for d in descs if d.uncompressed_size), key=lambda d: d.uncompressed_offset
        )
        limit = (size + BLOCK - 1) // BLOCK * BLOCK
        prev_end = 0
        for d in chunks:
            if d.uncompressed_offset % BLOCK:
                raise FormatError(
                    f"blob {blob_id}: chunk {d.index} at uncompressed offset "
                    f"{d.uncompressed_offset} is not 4 KiB-aligned (use --fs-driver fuse)"
                )
            if d.uncompressed_offset < prev_end:
                raise FormatError(
                    f"blob {blob_id}: chunk {d.index} at uncompressed offset "
                    f"{d.uncompressed_offset} overlaps the chunk before it"
                )
            prev_end = d.uncompressed_offset + d.uncompressed_size
            if prev_end > limit:
                raise FormatError(
                    f"blob {blob_id}: chunk {d.index} ends at {prev_end}, beyond the blob's "
                    f"uncompressed size {size}"
                )
        return cls(blob_index, size, [d.uncompressed_offset for d in chunks], chunks)

    def span(self, offset: int, end: int) -> tuple[int, int]:
        """Positions [i, j) in `chunks` of the chunks overlapping [offset, end)."""
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        if i < len(self.chunks):
            d = self.chunks[i]
            if d.uncompressed_offset + d.uncompressed_size <= offset:
                i += 1
        j = bisect.bisect_left(self.starts, end, lo=i)
        return i, j


class BlobViews:
    """Reads of the uncompressed views of every blob of a chunk device."""

    def __init__(self, device: ChunkDevice) -> None:
        self.device = device
        self.blobs = device.sb.blobs
        self._index: dict[int, BlobIndex] = {}
        self._failed: dict[int, FormatError] = {}
        self._lock = threading.Lock()

    def size(self, blob_index: int) -> int:
        return self.blobs[blob_index].uncompressed_size

    def index(self, blob_index: int) -> BlobIndex:
        idx = self._index.get(blob_index)
        if idx is not None:
            return idx
        with self._lock:
            idx = self._index.get(blob_index)
            if idx is not None:
                return idx
            failed = self._failed.get(blob_index)
            if failed is not None:
                raise failed
            blob = self.blobs[blob_index]
            meta = self.device.meta(blob_index)
            if meta.chunks is None:
                raise StorageError(f"blob {blob.blob_id}: no chunk-info array (RAFS v5)")
            try:
                idx = BlobIndex.build(blob_index, blob.blob_id, blob.uncompressed_size, meta.chunks)
            except FormatError as exc:
                log.error("%s", exc)
                self._failed[blob_index] = exc
                raise
            self._index[blob_index] = idx
            return idx

    def _refs(self, idx: BlobIndex, i: int, j: int) -> list[ChunkRef]:
        return [
            ChunkRef(idx.blob_index, d.index, 0, d.uncompressed_offset, d.uncompressed_size)
            for d in idx.chunks[i:j]
        ]

    def read(self, blob_index: int, offset: int, size: int) -> bytes:
        """`size` bytes (fewer at the end of the blob) at `offset` of the blob's view."""
        idx = self.index(blob_index)
        end = min(offset + size, idx.size)
        if offset >= end:
            return b""
        i, j = idx.span(offset, end)
        refs = self._refs(idx, i, j)
        dev = self.device
        pieces: list[bytes | None] = []
        missing: list[ChunkRef] = []
        for ref in refs:
            lo = max(offset, ref.uncompressed_offset) - ref.uncompressed_offset
            hi = min(end, ref.uncompressed_offset + (ref.uncompressed_size or 0))
            piece = dev.cached_range(ref, lo, hi - ref.uncompressed_offset)
            if piece is None:
                missing.append(ref)
            pieces.append(piece)
        dev.cache_metrics.record_request(len(refs), len(refs) - len(missing))
        datas = dev.get_chunks(missing) if missing else {}
        return self._assemble(idx, offset, end, refs, pieces, datas)

    def read_memory(self, blob_index: int, offset: int, size: int) -> bytes | None:
        """`read` from decompressed chunks held in memory only; None if any is not there
        (never blocks on I/O)."""
        idx = self._index.get(blob_index)
        if idx is None:
            return None
        end = min(offset + size, idx.size)
        if offset >= end:
            return None
        i, j = idx.span(offset, end)
        refs = self._refs(idx, i, j)
        datas: dict[Key, bytes] = {}
        for ref in refs:
            data = self.device.in_memory(ref)
            if data is None:
                return None
            datas[Key(ref.blob_index, ref.ci_index)] = data
        self.device.cache_metrics.record_request(len(refs), len(refs))
        return self._assemble(idx, offset, end, refs, [None] * len(refs), datas)

    def _assemble(
        self,
        idx: BlobIndex,
        offset: int,
        end: int,
        refs: list[ChunkRef],
        pieces: list[bytes | None],
        datas: Mapping[Key, bytes],
    ) -> bytes:
        out: list[bytes] = []
        pos = offset
        for ref, piece in zip(refs, pieces, strict=True):
            start = ref.uncompressed_offset
            if start > pos:
                out.append(bytes(start - pos))  # a hole between chunks
                pos = start
            hi = min(end, start + (ref.uncompressed_size or 0))
            if piece is None:
                data = datas[Key(ref.blob_index, ref.ci_index)]
                if len(data) < hi - start:
                    raise StorageError(
                        f"blob {self.blobs[idx.blob_index].blob_id} chunk {ref.ci_index}: "
                        f"{len(data)} bytes, expected {ref.uncompressed_size}"
                    )
                piece = data[pos - start : hi - start]
            out.append(piece)
            pos = hi
        if pos < end:
            out.append(bytes(end - pos))
        return out[0] if len(out) == 1 else b"".join(out)
