"""Per-blob chunk metadata at run time: where each chunk lives and what its digest is.

RAFS v6: the blob's CI array, read as `ci_compressed_size + 4096` bytes at `ci_offset`
(the CI header must equal the blob-table entry), decompressed with `ci_compressor`;
digests from the blob's `blob.digest` section (found through its ToC) when the blob has
INLINED_CHUNK_DIGEST, else from the bootstrap's chunk table. With a cache work dir the CI
buffer is kept as `<blob_id>.blob.meta` (CI padded to 4 KiB + header, rafs-format §6.10)
and the digests as `<blob_id>.blob.digest`, so a restarted daemon reads neither again.

RAFS v5: blobs have no CI array; every chunk's location comes from the bootstrap.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from nydus.errors import FormatError
from nydus.format.blobmeta import BlobMetaHeader, TocEntry, parse_toc, unpack_ci_array
from nydus.format.constants import BLOB_META_HEADER_SIZE, BlobFeatures, align
from nydus.format.rafs import ChunkRef, RafsSuper
from nydus.format.v6 import BlobInfo
from nydus.storage.backend import BlobBackend
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester

__all__ = ["BlobMeta", "ChunkDesc", "check_blob_info", "load_blob_meta", "write_atomic"]

log = logging.getLogger(__name__)

DIGEST_SIZE = 32


@dataclass(frozen=True, slots=True)
class ChunkDesc:
    """Everything needed to fetch, decode, check and cache one chunk of a blob."""

    index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed: bool
    digest: bytes | None = None

    @property
    def compressed_end(self) -> int:
        return self.compressed_offset + self.compressed_size


class BlobMeta:
    """Chunk table of one blob (v6: from its CI array; v5: from the bootstrap's refs)."""

    def __init__(
        self,
        blob: BlobInfo,
        compressor: Compressor,
        digester: Digester,
        chunks: list[ChunkDesc] | None,
    ) -> None:
        self.blob = blob
        self.blob_id = blob.blob_id
        self.compressor = compressor
        self.digester = digester
        self.chunks = chunks

    @property
    def chunk_count(self) -> int:
        if self.chunks is not None:
            return len(self.chunks)
        return self.blob.chunk_count

    @property
    def uncompressed_size(self) -> int:
        return self.blob.uncompressed_size

    def chunk(self, ref: ChunkRef) -> ChunkDesc:
        """The descriptor of the chunk a file's chunk reference points at."""
        if self.chunks is not None:
            if not 0 <= ref.ci_index < len(self.chunks):
                raise FormatError(
                    f"blob {self.blob_id}: chunk index {ref.ci_index} out of "
                    f"range (blob has {len(self.chunks)} chunks)"
                )
            desc = self.chunks[ref.ci_index]
            if desc.digest is None and ref.digest is not None:
                desc = ChunkDesc(
                    desc.index,
                    desc.compressed_offset,
                    desc.compressed_size,
                    desc.uncompressed_offset,
                    desc.uncompressed_size,
                    desc.compressed,
                    ref.digest,
                )
            return desc
        if (
            ref.compressed_offset is None
            or ref.compressed_size is None
            or ref.uncompressed_size is None
        ):
            raise FormatError(f"blob {self.blob_id}: chunk {ref.ci_index} has no location")
        return ChunkDesc(
            ref.ci_index,
            ref.compressed_offset,
            ref.compressed_size,
            ref.uncompressed_offset,
            ref.uncompressed_size,
            bool(ref.compressed),
            ref.digest,
        )


def write_atomic(path: str, data: bytes) -> None:
    """Write a cache file under a temporary name and rename it into place."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write cache file %s: %s", path, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _check_header(blob: BlobInfo, hdr: BlobMetaHeader) -> None:
    where = f"blob {blob.blob_id}: CI header"
    if (
        not blob.features & BlobFeatures.IS_CHUNKDICT_GENERATED
        and hdr.ci_entries != blob.chunk_count
    ):
        raise FormatError(f"{where}: {hdr.ci_entries} entries, blob table says {blob.chunk_count}")
    for name in ("ci_compressor", "ci_offset", "ci_compressed_size", "ci_uncompressed_size"):
        if getattr(hdr, name) != getattr(blob, name):
            raise FormatError(
                f"{where}: {name} {getattr(hdr, name)} != blob table value {getattr(blob, name)}"
            )


def _meta_cache_path(cache_dir: str | None, blob_id: str, suffix: str) -> str | None:
    return os.path.join(cache_dir, f"{blob_id}{suffix}") if cache_dir else None


def _read_ci_buffer(blob: BlobInfo, backend: BlobBackend, cache_dir: str | None) -> bytes:
    usize = blob.ci_uncompressed_size
    path = _meta_cache_path(cache_dir, blob.blob_id, ".blob.meta")
    expect = align(usize, 4096) + BLOB_META_HEADER_SIZE
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
            if len(data) == expect:
                hdr = BlobMetaHeader.unpack(data[-BLOB_META_HEADER_SIZE:])
                _check_header(blob, hdr)
                log.debug("blob %s: CI array from cache file %s", blob.blob_id, path)
                return data[:usize]
            log.warning(
                "cache file %s has size %d, expected %d; refetching", path, len(data), expect
            )
        except (OSError, FormatError) as exc:
            log.warning("cache file %s is unusable (%s); refetching", path, exc)
    raw = backend.read(
        blob.blob_id, blob.ci_offset, blob.ci_compressed_size + BLOB_META_HEADER_SIZE
    )
    hdr = BlobMetaHeader.unpack(raw[blob.ci_compressed_size :])
    _check_header(blob, hdr)
    try:
        comp = Compressor(blob.ci_compressor)
    except ValueError:
        raise FormatError(
            f"blob {blob.blob_id}: unknown CI compressor {blob.ci_compressor}"
        ) from None
    ci = (
        comp.decompress(raw[: blob.ci_compressed_size], usize)
        if comp is not Compressor.NONE
        else raw[: blob.ci_compressed_size]
    )
    if len(ci) != usize:
        raise FormatError(f"blob {blob.blob_id}: CI array is {len(ci)} bytes, expected {usize}")
    if path:
        write_atomic(path, ci.ljust(align(usize, 4096), b"\0") + raw[blob.ci_compressed_size :])
    return ci


def _read_toc(blob: BlobInfo, backend: BlobBackend) -> list[TocEntry]:
    blob_size = backend.size(blob.blob_id)
    toc_size = blob.blob_toc_size
    if toc_size:
        if toc_size > blob_size:
            raise FormatError(f"blob {blob.blob_id}: ToC size {toc_size} exceeds the blob")
        buf = backend.read(blob.blob_id, blob_size - toc_size, toc_size)
        if any(blob.blob_toc_digest) and hashlib.sha256(buf).digest() != blob.blob_toc_digest:
            raise FormatError(f"blob {blob.blob_id}: ToC digest mismatch")
    else:
        n = min(4096, blob_size // 128 * 128)
        buf = backend.read(blob.blob_id, blob_size - n, n)
    return parse_toc(buf)


def _read_digests(blob: BlobInfo, backend: BlobBackend, cache_dir: str | None) -> list[bytes]:
    count = blob.chunk_count
    size = DIGEST_SIZE * count
    path = _meta_cache_path(cache_dir, blob.blob_id, ".blob.digest")
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
            if len(data) == size:
                return [data[i : i + DIGEST_SIZE] for i in range(0, size, DIGEST_SIZE)]
        except OSError as exc:
            log.warning("cache file %s is unusable (%s); refetching", path, exc)
    entries = [e for e in _read_toc(blob, backend) if e.name == "blob.digest"]
    if not entries:
        raise FormatError(
            f"blob {blob.blob_id}: INLINED_CHUNK_DIGEST set but its ToC has no blob.digest entry"
        )
    e = entries[0]
    if e.compressed_size != size or e.uncompressed_size != size:
        raise FormatError(
            f"blob {blob.blob_id}: blob.digest section is {e.compressed_size} "
            f"bytes, expected {size} for {count} chunks"
        )
    data = backend.read(blob.blob_id, e.compressed_offset, size)
    if any(e.digest) and hashlib.sha256(data).digest() != e.digest:
        raise FormatError(f"blob {blob.blob_id}: blob.digest section digest mismatch")
    if path:
        write_atomic(path, data)
    return [data[i : i + DIGEST_SIZE] for i in range(0, size, DIGEST_SIZE)]


def check_blob_info(version: int, blob: BlobInfo) -> tuple[Compressor, Digester]:
    """What can be said of a blob-table entry without reading the blob: its compressor and
    digester, and that its features are ones we read. FormatError naming the blob otherwise."""
    try:
        compressor = Compressor(blob.compressor)
        digester = Digester(blob.digester)
    except ValueError:
        raise FormatError(f"blob {blob.blob_id}: unknown compressor/digester id") from None
    f = blob.features
    if version != 5 and f & (
        BlobFeatures.ZRAN
        | BlobFeatures.BATCH
        | BlobFeatures.ENCRYPTED
        | BlobFeatures.SEPARATE
        | BlobFeatures.TARFS
        | BlobFeatures.EXTERNAL
    ):
        raise FormatError(
            f"blob {blob.blob_id}: features 0x{f:x} (zran/batch/encrypted/"
            "separate/tarfs/external) are not supported"
        )
    return compressor, digester


def load_blob_meta(
    sb: RafsSuper,
    blob: BlobInfo,
    backend: BlobBackend,
    cache_dir: str | None = None,
    want_digests: bool = True,
) -> BlobMeta:
    """Load the chunk table of `blob` (an entry of `sb.blobs`). Without `want_digests` (nothing
    is going to be validated) a blob's inline digest section is not fetched; the
    bootstrap's chunk table is not read for them either (`ChunkDesc.digest` is None)."""
    compressor, digester = check_blob_info(sb.version, blob)
    if sb.version == 5:
        return BlobMeta(blob, compressor, digester, None)
    f = blob.features
    if blob.chunk_count == 0:
        return BlobMeta(blob, compressor, digester, [])
    if not blob.ci_uncompressed_size:
        raise FormatError(f"blob {blob.blob_id}: no chunk-info array (ci_uncompressed_size 0)")
    try:
        ci = _read_ci_buffer(blob, backend, cache_dir)
        metas = unpack_ci_array(ci, blob.chunk_count, bool(f & BlobFeatures.CHUNK_INFO_V2))
    except FormatError as exc:
        raise FormatError(f"blob {blob.blob_id}: {exc}") from None
    digests: list[bytes] | None = None
    if not want_digests:
        pass
    elif f & BlobFeatures.INLINED_CHUNK_DIGEST:
        digests = _read_digests(blob, backend, cache_dir)
    else:
        table = {c.index: c.digest for c in sb.chunk_table() if c.blob_index == blob.blob_index}
        if table:
            digests = [table.get(i, b"") for i in range(blob.chunk_count)]
    chunks = []
    for i, m in enumerate(metas):
        d = digests[i] if digests is not None and digests[i] else None
        chunks.append(
            ChunkDesc(
                i,
                m.compressed_offset,
                m.compressed_size,
                m.uncompressed_offset,
                m.uncompressed_size,
                m.compressed,
                d,
            )
        )
    log.debug(
        "blob %s: %d chunks, digests %s",
        blob.blob_id,
        len(chunks),
        "not needed"
        if not want_digests
        else "inline"
        if f & BlobFeatures.INLINED_CHUNK_DIGEST
        else ("from chunk table" if digests else "unavailable"),
    )
    return BlobMeta(blob, compressor, digester, chunks)
