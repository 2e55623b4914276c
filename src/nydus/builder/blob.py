"""Streaming native blob writer: chunks are digested and compressed on a thread pool,
deduplicated in input order, and written back to back (compressor none: at their
uncompressed offsets), then the blob meta trailer (CI array, header, optional digest
array, inline bootstrap and ToC) follows. The output is written strictly sequentially,
so it may be a FIFO.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from nydus.builder.tree import Chunk
from nydus.errors import BuildError
from nydus.format.blobmeta import (
    TOC_FLAG_OF_COMPRESSOR,
    TOC_NAME,
    BlobMetaHeader,
    ChunkMeta,
    TocEntry,
    TocFlags,
    tar_header,
)
from nydus.format.constants import BLOCK_SIZE, BlobFeatures, align
from nydus.format.v6 import BlobInfo
from nydus.utils.compress import Compressor, compress_if_smaller
from nydus.utils.digest import Digester

log = logging.getLogger(__name__)

Opener = Callable[[], BinaryIO]


class BlobOutputError(BuildError):
    """Writing the blob failed (kept apart from errors reading the source)."""


@dataclass(slots=True)
class BlobResult:
    """What the bootstrap needs to know about a written blob."""

    blob_id: str
    info: BlobInfo  # blob table entry (blob_index filled by the caller)
    size: int  # bytes written
    chunk_count: int
    file_digest: str = ""  # "sha256:<hex>" of the whole blob file (its OCI layer digest)


def _work(digester: Digester, compressor: Compressor, data: bytes) -> tuple[bytes, bytes, bool]:
    digest = digester.digest(data)
    stored, compressed = compress_if_smaller(compressor, data)
    return digest, stored, compressed


def _read_chunk(path: bytes, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, size, offset)
            while len(data) < size:
                more = os.pread(fd, size - len(data), offset + len(data))
                if not more:
                    raise BuildError(f"{os.fsdecode(path)} shrank while it was read")
                data += more
        finally:
            os.close(fd)
    except OSError as exc:
        raise BuildError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from exc
    return data


# a task is (data or None, path, offset, size): data in memory, or a file range to read
_Task = tuple[bytes | None, bytes, int, int]


def _work_batch(
    digester: Digester, compressor: Compressor, tasks: list[_Task]
) -> list[tuple[bytes, bytes, bool]]:
    """Read (when given a path), digest and compress a batch of chunks in a worker: one
    job per batch keeps the per-chunk overhead of many small files low."""
    out = []
    for data, path, offset, size in tasks:
        if data is None:
            data = _read_chunk(path, offset, size)
        out.append(_work(digester, compressor, data))
    return out


class _OutputThread:
    """Hashes (blob id) and writes the blob in order on its own thread, so the main
    thread keeps feeding the chunk workers."""

    def __init__(self, out: BinaryIO, hasher: hashlib._Hash, file_hasher: hashlib._Hash) -> None:
        self.out, self.hasher, self.file_hasher = out, hasher, file_hasher
        self.queue: queue.Queue[tuple[bytes, bool] | None] = queue.Queue(maxsize=64)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    data, hashed = item
                    if hashed:
                        self.hasher.update(data)
                    self.file_hasher.update(data)
                    self.out.write(data)
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                self.error = exc
            finally:
                self.queue.task_done()

    def put(self, data: bytes, hashed: bool) -> None:
        self._check()
        self.queue.put((data, hashed))

    def sync(self) -> None:
        self.queue.join()
        self._check()

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _check(self) -> None:
        if self.error is not None:
            exc = self.error
            if isinstance(exc, OSError):
                raise BlobOutputError(f"cannot write the blob: {exc.strerror}") from exc
            raise exc


@dataclass(slots=True)
class _Pending:
    future: Future[list[tuple[bytes, bytes, bool]]]
    places: list[tuple[int, list[Chunk | None], int]]  # (size, target list, position)


@dataclass
class BlobWriter:
    """Writes one blob; `dedup` maps chunk digests to chunks already stored (this blob,
    parent layers), and is updated with the chunks this blob adds."""

    opener: Opener
    blob_index: int
    compressor: Compressor
    digester: Digester
    chunk_size: int
    dedup: dict[bytes, Chunk] = field(default_factory=dict)
    workers: int = max(2, 2 * (os.cpu_count() or 1))
    _out: BinaryIO | None = None
    _writer: _OutputThread | None = None
    _pos: int = 0
    _upos: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _file_hash: hashlib._Hash = field(default_factory=hashlib.sha256)  # every byte written
    _metas: list[ChunkMeta] = field(default_factory=list)
    _digests: list[bytes] = field(default_factory=list)
    _pending: deque[_Pending] = field(default_factory=deque)
    _batch: list[_Task] = field(default_factory=list)
    _places: list[tuple[int, list[Chunk | None], int]] = field(default_factory=list)
    _batch_bytes: int = 0

    BATCH_BYTES: ClassVar[int] = 1 << 20
    BATCH_TASKS: ClassVar[int] = 64

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chunk")
        self._window = max(4, min(4 * self.workers, (64 << 20) // self.chunk_size))

    # ---- input --------------------------------------------------------------
    def add_file(self, read: Callable[[int], bytes], size: int) -> list[Chunk | None]:
        """Queue a file's data, read with `read(n)`; the returned list is filled in as
        chunks complete (complete after `flush()`)."""
        n = (size + self.chunk_size - 1) // self.chunk_size
        target: list[Chunk | None] = [None] * n
        for i in range(n):
            want = min(self.chunk_size, size - i * self.chunk_size)
            self._queue((_read_exact(read, want), b"", 0, want), target, i)
        return target

    def add_path(self, path: bytes, size: int) -> list[Chunk | None]:
        """Queue a file by path: the workers read its chunks themselves."""
        n = (size + self.chunk_size - 1) // self.chunk_size
        target: list[Chunk | None] = [None] * n
        for i in range(n):
            off = i * self.chunk_size
            self._queue((None, path, off, min(self.chunk_size, size - off)), target, i)
        return target

    def _queue(self, task: _Task, target: list[Chunk | None], pos: int) -> None:
        self._batch.append(task)
        self._places.append((task[3], target, pos))
        self._batch_bytes += task[3]
        if self._batch_bytes >= self.BATCH_BYTES or len(self._batch) >= self.BATCH_TASKS:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        fut = self._pool.submit(_work_batch, self.digester, self.compressor, self._batch)
        self._pending.append(_Pending(fut, self._places))
        self._batch, self._places, self._batch_bytes = [], [], 0
        while len(self._pending) > self._window:
            self._drain_one()

    def flush(self) -> None:
        self._submit()
        while self._pending:
            self._drain_one()
        if self._writer is not None:
            self._writer.sync()

    def _drain_one(self) -> None:
        p = self._pending.popleft()
        out: list[bytes] = []
        for (size, target, pos), (digest, stored, compressed) in zip(
            p.places, p.future.result(), strict=False
        ):
            target[pos] = self._place(digest, stored, size, compressed, out)
        if out:
            self._emit(b"".join(out))

    def _place(
        self, digest: bytes, stored: bytes, size: int, compressed: bool, out: list[bytes]
    ) -> Chunk:
        """The chunk for `digest`: one already stored, or a new one whose bytes (and any
        identity-layout padding) are appended to `out`."""
        hit = self.dedup.get(digest)
        if hit is not None and hit.uncompressed_size == size:
            return hit
        if self.compressor is Compressor.NONE and self._upos > self._pos:
            # identity layout: compressed offset == uncompressed offset
            out.append(b"\0" * (self._upos - self._pos))
            self._pos = self._upos
        chunk = Chunk(
            digest,
            self.blob_index,
            len(self._metas),
            self._upos,
            size,
            self._pos,
            len(stored),
            compressed,
        )
        out.append(stored)
        self._pos += len(stored)
        self._metas.append(
            ChunkMeta(
                chunk.uncompressed_offset,
                size,
                chunk.compressed_offset,
                len(stored),
                compressed,
            )
        )
        self._digests.append(digest)
        self._upos += align(size, BLOCK_SIZE)
        self.dedup[digest] = chunk
        return chunk

    def add_stored(self, digest: bytes, stored: bytes, size: int, compressed: bool) -> Chunk:
        """Append a chunk that is already digested and compressed with this blob's
        compressor (copied from another blob, say); deduplicated like any other."""
        if self._batch or self._pending:
            self.flush()
        out: list[bytes] = []
        chunk = self._place(digest, stored, size, compressed, out)
        if out:
            self._emit(b"".join(out))
        return chunk

    def _write(self, data: bytes, hashed: bool = True) -> None:
        self._emit(data, hashed)
        self._pos += len(data)

    def _emit(self, data: bytes, hashed: bool = True) -> None:
        """Hand bytes already accounted in `_pos` to the output thread."""
        if not data:
            return
        if self._writer is None:
            self._out = self.opener()
            self._writer = _OutputThread(self._out, self._hash, self._file_hash)
        self._writer.put(data, hashed)

    def _sync(self) -> None:
        if self._writer is not None:
            self._writer.sync()

    @property
    def chunk_count(self) -> int:
        return len(self._metas)

    @property
    def uncompressed_size(self) -> int:
        return self._upos

    # ---- trailer ------------------------------------------------------------
    def finish(
        self, *, blob_toc: bool, inline_bootstrap: Callable[[BlobInfo], bytes] | None
    ) -> BlobResult | None:
        """Write the blob meta trailer. `inline_bootstrap(info)` returns the bootstrap to
        embed (built with this blob's table entry). Returns None if nothing was written."""
        self.flush()
        self._pool.shutdown()
        count = len(self._metas)
        if count == 0 and inline_bootstrap is None:
            return None
        features = BlobFeatures.ALIGNED | BlobFeatures.CAP_TAR_TOC
        tar = blob_toc or inline_bootstrap is not None
        if tar:
            features |= BlobFeatures.HAS_TAR_HEADER
        if blob_toc:
            features |= BlobFeatures.HAS_TOC
            if count:
                features |= BlobFeatures.INLINED_CHUNK_DIGEST
        if inline_bootstrap is not None:
            features |= BlobFeatures.INLINED_FS_META
        toc: list[TocEntry] = []
        data_size = self._pos
        data_digest = None
        if tar and count:
            self._write(tar_header("image.blob", data_size))
            self._sync()
            data_digest = self._hash.copy().digest()
        ci_raw = b"".join(m.pack_v1() for m in self._metas)
        ci_offset = ci_stored_size = 0
        ci_comp = Compressor.NONE
        header = b""
        if count:
            ci_stored, compressed = compress_if_smaller(self.compressor, ci_raw)
            ci_comp = self.compressor if compressed else Compressor.NONE
            ci_offset, ci_stored_size = self._pos, len(ci_stored)
            header = BlobMetaHeader(
                features, int(ci_comp), count, ci_offset, len(ci_stored), len(ci_raw)
            ).pack()
            self._write(ci_stored)
            self._write(header)
            if tar:
                self._write(tar_header("blob.meta", len(ci_stored) + len(header)))
        if data_digest is not None:
            toc.append(TocEntry(TocFlags.NONE, "image.blob", data_digest, 0, data_size, self._upos))
        if count:
            toc.append(
                TocEntry(
                    TOC_FLAG_OF_COMPRESSOR[ci_comp],
                    "blob.meta",
                    hashlib.sha256(ci_raw).digest(),
                    ci_offset,
                    ci_stored_size,
                    len(ci_raw),
                )
            )
            toc.append(
                TocEntry(
                    TocFlags.NONE,
                    "blob.meta.header",
                    hashlib.sha256(header).digest(),
                    ci_offset + ci_stored_size,
                    len(header),
                    len(header),
                )
            )
        if blob_toc and count:
            digests = b"".join(self._digests)
            toc.append(
                TocEntry(
                    TocFlags.NONE,
                    "blob.digest",
                    hashlib.sha256(digests).digest(),
                    self._pos,
                    len(digests),
                    len(digests),
                )
            )
            self._write(digests, hashed=False)
            self._write(tar_header("blob.digest", len(digests)))

        def info(
            compressed_size: int, toc_size: int = 0, toc_digest: bytes = b"\0" * 32
        ) -> BlobInfo:
            return BlobInfo(
                blob_id="",
                blob_index=self.blob_index,
                chunk_size=self.chunk_size,
                chunk_count=count,
                compressor=int(self.compressor),
                digester=int(self.digester),
                features=features,
                compressed_size=compressed_size,
                uncompressed_size=self._upos,
                blob_toc_size=toc_size,
                ci_compressor=int(ci_comp),
                ci_offset=ci_offset,
                ci_compressed_size=ci_stored_size,
                ci_uncompressed_size=len(ci_raw),
                blob_toc_digest=toc_digest,
            )

        if inline_bootstrap is not None:
            boot = inline_bootstrap(info(self._pos))
            if blob_toc:
                stored, compressed = compress_if_smaller(Compressor.ZSTD, boot)
                flag = TOC_FLAG_OF_COMPRESSOR[Compressor.ZSTD] if compressed else TocFlags.NONE
            else:
                stored, flag = boot, TocFlags.NONE
            toc.append(
                TocEntry(
                    flag,
                    "image.boot",
                    hashlib.sha256(boot).digest(),
                    self._pos,
                    len(stored),
                    len(boot),
                )
            )
            self._write(stored)
            self._write(tar_header("image.boot", len(stored)))
        toc_size, toc_digest = 0, b"\0" * 32
        if blob_toc:
            entries = b"".join(e.pack() for e in toc)
            trailer = entries + tar_header(TOC_NAME, len(entries))
            toc_size, toc_digest = len(trailer), hashlib.sha256(trailer).digest()
            self._write(trailer)
        if self._writer is not None:
            self._writer.sync()
            self._writer.close()
        if self._out is not None:
            try:
                self._out.flush()
            except OSError as exc:
                raise BlobOutputError(f"cannot write the blob: {exc.strerror}") from exc
        blob_id = self._hash.hexdigest()
        final = info(self._pos, toc_size, toc_digest)
        return BlobResult(blob_id, final, self._pos, count, "sha256:" + self._file_hash.hexdigest())

    def abort(self) -> None:
        for p in self._pending:
            p.future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            self._writer.error = self._writer.error or RuntimeError("aborted")
            self._writer.close()


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    buf = read(n)
    if len(buf) == n:
        return buf
    parts = [buf]
    got = len(buf)
    while got < n:
        more = read(n - got)
        if not more:
            from nydus.errors import BuildError

            raise BuildError(f"source file shrank while reading: got {got} of {n} bytes")
        parts.append(more)
        got += len(more)
    return b"".join(parts)
