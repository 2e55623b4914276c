"""`nydus-image export --block`: one raw EROFS disk image the kernel mounts alone.

The image is the bootstrap followed by the uncompressed view of every blob, blob *i* at
block `mapped_blkaddr[i]` of its device slot (rafs-format §8.3): the kernel, given no
`device=` option, reads chunk (device d, blkaddr b) at block `mapped_blkaddr[d-1] + b`.
The stored slots are used when they lay the blobs out after the bootstrap without overlap;
otherwise the export lays them out itself (512 KiB aligned, as the builder does) and writes
those addresses into its copy of the bootstrap. Every chunk is decompressed and verified on
its way; the gaps between chunks stay holes (zeros) in a sparse output file.

Before writing, every file's chunk indexes are checked against the blobs' chunk-info
arrays: a `blkaddr` that disagrees with the chunk's uncompressed offset would make the
kernel read other bytes than nydusd serves, so the export refuses such an image.

With `verity`, a dm-verity hash tree over all data blocks follows at the next 4 KiB
boundary, and the result carries the `veritysetup` options with the root hash.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nydus.builder.output import AtomicFile
from nydus.builder.source_image import ImageSource
from nydus.errors import BuildError
from nydus.format import layout
from nydus.format.constants import (
    BLOCK_SIZE,
    MAPPED_BLKADDR_ALIGN,
    align,
)
from nydus.format.rafs import ChunkRef, walk
from nydus.storage.blobmeta import ChunkDesc
from nydus.storage.device import Key
from nydus.utils.verity import build_hash_tree

__all__ = ["ExportResult", "export_block"]

log = logging.getLogger(__name__)

GROUP_BYTES = 8 << 20  # bytes (compressed or not, the larger) of one read task
_SLOT_MAPPED = 68  # offset of mapped_blkaddr in a device slot


@dataclass
class ExportResult:
    output: str
    blocks: int  # data blocks (bootstrap and blobs)
    size: int  # bytes of the output file
    mapped: list[int]  # block address of each blob
    relaid: bool  # the export chose the blob addresses itself
    verity_options: str | None = None
    root_hash: str | None = None


def _pread(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise BuildError("the exported image shrank while it was hashed")
        data += more
    return data


def _layout(boot_blocks: int, blocks: list[int]) -> list[int]:
    mapped = []
    pos = align(boot_blocks * BLOCK_SIZE, MAPPED_BLKADDR_ALIGN) // BLOCK_SIZE
    for n in blocks:
        mapped.append(pos)
        pos = align((pos + n) * BLOCK_SIZE, MAPPED_BLKADDR_ALIGN) // BLOCK_SIZE
    return mapped


def _stored_ok(boot_blocks: int, blocks: list[int], stored: list[int]) -> bool:
    end = boot_blocks
    for n, m in zip(blocks, stored, strict=True):
        if m < end:
            return False
        end = m + n
    return end < 1 << 32


def _check_chunk_indexes(src: ImageSource, descs: dict[int, list[ChunkDesc]]) -> None:
    sb = src.sb
    chunk_addrs = sb.chunk_addrs  # type: ignore[attr-defined]  # v6 only
    seen: set[int] = set()
    for path, ino in walk(sb):
        if ino in seen or not sb.attr(ino).is_reg:
            continue
        seen.add(ino)
        for a in chunk_addrs(ino):
            blob = sb.blobs[a.blob_index]
            chunks = descs[a.blob_index]
            if not 0 <= a.ci_index < len(chunks):
                raise BuildError(
                    f"{_show(path)}: chunk {a.ci_index} of blob {blob.blob_id} does not exist"
                )
            want = chunks[a.ci_index].uncompressed_offset
            if a.blkaddr * BLOCK_SIZE != want:
                raise BuildError(
                    f"{_show(path)}: its chunk index names block {a.blkaddr} of blob "
                    f"{blob.blob_id}, the chunk-info array offset {want}: the kernel "
                    "would read other bytes than the file holds"
                )


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _groups(blob_index: int, chunks: list[ChunkDesc]) -> list[list[ChunkRef]]:
    out: list[list[ChunkRef]] = []
    cur: list[ChunkRef] = []
    size = 0
    for d in sorted(chunks, key=lambda c: c.compressed_offset):
        cur.append(ChunkRef(blob_index, d.index, 0, d.uncompressed_offset))
        size += max(d.compressed_size, d.uncompressed_size)
        if size >= GROUP_BYTES:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def export_block(
    src: ImageSource, output: str, *, verity: bool = False, threads: int = 4
) -> ExportResult:
    sb = src.sb
    if sb.version != 6:
        raise BuildError(f"bootstrap {src.path} is RAFS v5: only RAFS v6 exports as EROFS")
    buf = getattr(sb, "buf", None)
    slots = getattr(sb, "devices", None)
    if buf is None or slots is None:
        raise BuildError(f"bootstrap {src.path}: no raw EROFS image to export")
    boot = bytearray(buf)
    boot_blocks = len(boot) // BLOCK_SIZE
    dev = src.device
    if sb.blobs and dev is None:
        raise BuildError("the image has blobs: give the blob directory (-D)")
    descs: dict[int, list[ChunkDesc]] = {}
    blocks: list[int] = []
    for b in sb.blobs:
        assert dev is not None
        chunks = dev.meta(b.blob_index).chunks or []
        descs[b.blob_index] = chunks
        need = (
            max(
                (align(c.uncompressed_offset + c.uncompressed_size, BLOCK_SIZE) for c in chunks),
                default=0,
            )
            // BLOCK_SIZE
        )
        blocks.append(max(slots[b.blob_index].blocks, need))
    _check_chunk_indexes(src, descs)
    stored = [slots[i].mapped_blkaddr for i in range(len(sb.blobs))]
    relaid = not _stored_ok(boot_blocks, blocks, stored)
    mapped = _layout(boot_blocks, blocks) if relaid else stored
    if relaid:
        log.info("device slots do not lay the blobs out after the bootstrap: relaid")
        for i, m in enumerate(mapped):
            off = layout.device_slot_offset(i) + _SLOT_MAPPED
            boot[off : off + 4] = m.to_bytes(4, "little")
    total = mapped[-1] + blocks[-1] if sb.blobs else boot_blocks
    out = AtomicFile(output)
    if out.stream:
        raise BuildError(f"cannot export to {output}: the output must be a regular file")
    try:
        fh = out.open()
        fd = fh.fileno()
        os.pwrite(fd, bytes(boot), 0)
        os.ftruncate(fd, total * BLOCK_SIZE)

        def copy(job: tuple[int, list[ChunkRef]]) -> None:
            blob_index, refs = job
            assert dev is not None
            data = dev.get_chunks(refs, kind="readahead")
            base = mapped[blob_index] * BLOCK_SIZE
            for ref in refs:
                os.pwrite(fd, data[Key(blob_index, ref.ci_index)], base + ref.uncompressed_offset)

        jobs = [
            (b.blob_index, g) for b in sb.blobs for g in _groups(b.blob_index, descs[b.blob_index])
        ]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for _ in pool.map(copy, jobs):
                pass
        res = ExportResult(output, total, total * BLOCK_SIZE, mapped, relaid)
        if verity:
            fh.flush()
            tree = build_hash_tree(
                lambda a, b: _pread(fd, a * BLOCK_SIZE, (b - a) * BLOCK_SIZE), total, threads
            )
            hash_offset = total * BLOCK_SIZE
            os.pwrite(fd, tree.hash_area, hash_offset)
            res.size = hash_offset + len(tree.hash_area)
            res.verity_options = tree.options(hash_offset)
            res.root_hash = tree.root.hex()
        out.commit()
    except OSError as exc:
        out.discard()
        raise BuildError(f"cannot write {output}: {exc.strerror}") from exc
    except BaseException:
        out.discard()
        raise
    return res
