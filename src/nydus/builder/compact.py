"""`nydus-image compact`: rewrite an image whose blobs are small or mostly unused (after
many layers, or a chunk dictionary) into fewer, denser blobs; every file stays the same.

Upstream's rules, in its order:

1. a chunk also found (same digest) in an earlier blob, or in the chunk dictionary, is
   referenced there; a blob no file references any more is dropped;
2. a blob whose referenced chunks make less than `min_used_ratio` percent of its size is
   rebuilt with only those chunks (0 disables this);
3. blobs smaller than `compact_blob_size` (rebuilt ones by their used bytes) are merged,
   smallest first, into blobs of at most `max_compact_size`;
4. nothing happens when the image has fewer than `layers_to_compact` blobs (0: always).

New blobs are native blobs with a chunk-info array, digests and ToC, written to the blob
directory under their blob ids; chunk data is read back through the validating chunk device
and stored with the image's compressor. The new bootstrap goes to `<bootstrap>.compact`
unless an output is given; the source image is never modified.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nydus.builder.blob import BlobWriter
from nydus.builder.bootstrap import BootstrapOptions, write_bootstrap
from nydus.builder.output import AtomicFile, write_atomic
from nydus.builder.overlay import load_tree
from nydus.builder.source_image import ImageSource
from nydus.builder.tree import Chunk, Node
from nydus.errors import BuildError
from nydus.format.constants import BlobFeatures, SuperFlags
from nydus.format.rafs import ChunkRef
from nydus.format.v6 import BlobInfo
from nydus.storage.device import Key

__all__ = ["CompactConfig", "CompactResult", "compact"]

log = logging.getLogger(__name__)

MIB = 1 << 20
_BATCH = 16  # chunks fetched at a time


@dataclass
class CompactConfig:
    min_used_ratio: int = 0
    compact_blob_size: int = 10 * MIB
    max_compact_size: int = 100 * MIB
    layers_to_compact: int = 0

    def validate(self) -> None:
        if not 0 <= self.min_used_ratio <= 99:
            raise BuildError(f"invalid --min-used-ratio {self.min_used_ratio} (0-99)")
        if self.compact_blob_size < 0 or self.max_compact_size <= 0:
            raise BuildError("--compact-blob-size and --max-compact-size must be positive")
        if self.layers_to_compact < 0:
            raise BuildError("--layers-to-compact must not be negative")


@dataclass
class CompactResult:
    bootstrap: str
    blob_ids: list[str]  # the new blob table
    new_blobs: list[str]  # written by this compaction
    dropped: list[str]  # blobs of the source table the result no longer uses
    blob_bytes: dict[str, int] = field(default_factory=dict)  # new blob id -> size


@dataclass
class _Blob:
    info: BlobInfo
    size: int  # compressed bytes (the blob's size)
    used: dict[int, Chunk] = field(default_factory=dict)  # ci index -> a chunk using it
    state: str = "keep"  # keep | rebuild | drop | dict

    @property
    def used_bytes(self) -> int:
        return sum(c.compressed_size for c in self.used.values())


def _inodes(root: Node) -> list[Node]:
    seen: set[int] = set()
    out = []
    for _path, node in root.walk():
        if node.inode.is_reg and node.inode.chunks and id(node.inode) not in seen:
            seen.add(id(node.inode))
            out.append(node)
    return out


def compact(
    src: ImageSource,
    blob_dir: str,
    output: str | None,
    cfg: CompactConfig,
    chunk_dict: str | None = None,
) -> CompactResult | None:
    """Compact `src` (None: nothing worth doing)."""
    cfg.validate()
    sb = src.sb
    if sb.version != 6:
        raise BuildError(f"bootstrap {src.path} is RAFS v5: compact works on RAFS v6")
    if src.device is None:
        raise BuildError("compact needs the image's blobs (--blob-dir or --backend-type)")
    if not os.path.isdir(blob_dir):
        raise BuildError(f"blob directory {blob_dir} does not exist")
    output = output or src.path + ".compact"
    blobs = [
        _Blob(
            replace(b, features=b.features & ~BlobFeatures.INLINED_FS_META),
            b.compressed_size or src.device.backend.size(b.blob_id),
        )
        for b in sb.blobs
    ]
    dict_chunks: dict[bytes, Chunk] = {}
    if chunk_dict:
        from nydus.builder.chunkdict import load_chunk_dict

        cd = load_chunk_dict(chunk_dict, sb.chunk_size, sb.digester)
        have = {b.info.blob_id: i for i, b in enumerate(blobs)}
        mapping = {}
        for db in cd.blobs:
            if db.blob_id not in have:
                have[db.blob_id] = len(blobs)
                blobs.append(_Blob(replace(db, blob_index=len(blobs)), db.compressed_size))
            mapping[db.blob_index] = have[db.blob_id]
            blobs[have[db.blob_id]].state = "dict"
        for c in cd.chunks:
            dict_chunks.setdefault(c.digest, replace(c, blob_index=mapping[c.blob_index]))
    if len(blobs) < cfg.layers_to_compact:
        log.info(
            "compactor: %d blobs < layers_to_compact %d: nothing to do",
            len(blobs),
            cfg.layers_to_compact,
        )
        return None
    root = load_tree(sb)
    nodes = _inodes(root)
    # 1. dedup: the dictionary first, then the first blob holding a digest
    first: dict[bytes, Chunk] = {}
    for node in nodes:
        chunks = []
        for c in node.inode.chunks:
            hit = dict_chunks.get(c.digest) or first.setdefault(c.digest, c)
            if hit.uncompressed_size != c.uncompressed_size:
                hit = c
            chunks.append(hit)
            blobs[hit.blob_index].used.setdefault(hit.ci_index, hit)
        node.inode.chunks = chunks
    for b in blobs:
        if not b.used and b.state != "dict":
            b.state = "drop"
    # 2. rebuild sparsely used blobs
    for b in blobs:
        if b.state == "keep" and cfg.min_used_ratio:
            ratio = b.used_bytes * 100 // max(1, b.size)
            log.info("compactor: blob %s uses %d%% of its data", b.info.blob_id, ratio)
            if ratio < cfg.min_used_ratio:
                b.state = "rebuild"
    # 3. merge small blobs, smallest first, into groups up to max_compact_size
    rebuild = {i for i, b in enumerate(blobs) if b.state == "rebuild"}

    def size_of(i: int) -> int:
        return blobs[i].used_bytes if i in rebuild else blobs[i].size

    small = sorted(
        (size_of(i), i)
        for i, b in enumerate(blobs)
        if b.state in ("keep", "rebuild") and size_of(i) < cfg.compact_blob_size
    )
    groups: list[list[int]] = []
    if len(small) >= 2:
        cur = [small[0][1]]
        cur_used = blobs[cur[0]].used_bytes
        for _size, i in small[1:]:
            if cur_used + blobs[i].used_bytes <= cfg.max_compact_size:
                cur.append(i)
                cur_used += blobs[i].used_bytes
            else:
                groups.append(cur)
                cur, cur_used = [i], blobs[i].used_bytes
        groups.append(cur)
    merged = {i for g in groups for i in g}
    groups += [[i] for i in sorted(rebuild - merged)]
    # a blob alone in its group gains nothing unless it is sparse
    groups = [sorted(g) for g in groups if len(g) > 1 or g[0] in rebuild]
    if not groups and not any(b.state == "drop" for b in blobs):
        log.info("compactor: no chance to compact data blobs")
        return None
    return _write(src, blob_dir, output, root, nodes, blobs, groups)


def _write(
    src: ImageSource,
    blob_dir: str,
    output: str,
    root: Node,
    nodes: list[Node],
    blobs: list[_Blob],
    groups: list[list[int]],
) -> CompactResult:
    sb = src.sb
    assert src.device is not None
    # the new blob table: kept blobs and new ones, each at its first source position
    table: list[BlobInfo] = []
    renumber: dict[int, int] = {}
    group_at = {g[0]: g for g in groups}
    in_group = {i for g in groups for i in g}
    new_index: dict[int, int] = {}  # group head -> table index
    for i, b in enumerate(blobs):
        if i in group_at:
            new_index[i] = len(table)
            table.append(b.info)  # placeholder, replaced once written
        elif i not in in_group and b.used:
            renumber[i] = len(table)
            table.append(replace(b.info, blob_index=len(table)))
    moved: dict[tuple[int, int], Chunk] = {}
    new_ids: list[str] = []
    sizes: dict[str, int] = {}
    written: list[str] = []
    try:
        for head, g in group_at.items():
            index = new_index[head]
            info, blob_id, size, chunks = _rewrite(src, blob_dir, blobs, g, index)
            written.append(os.path.join(blob_dir, blob_id))
            table[index] = replace(info, blob_id=blob_id, blob_index=index)
            moved.update(chunks)
            new_ids.append(blob_id)
            sizes[blob_id] = size
        for node in nodes:
            node.inode.chunks = [
                moved.get((c.blob_index, c.ci_index))
                or replace(c, blob_index=renumber[c.blob_index])
                for c in node.inode.chunks
            ]
        opts = BootstrapOptions(
            sb.chunk_size,
            sb.compressor,
            sb.digester,
            bool(sb.flags & SuperFlags.EXPLICIT_UID_GID),
        )
        write_atomic(output, write_bootstrap(root, table, opts, []))
    except BaseException:
        for path in written:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise
    kept = {b.blob_id for b in table}
    dropped = [b.blob_id for b in sb.blobs if b.blob_id not in kept]
    log.info(
        "compactor: %d blobs -> %d (%d new, %d dropped)",
        len(sb.blobs),
        len(table),
        len(new_ids),
        len(dropped),
    )
    return CompactResult(output, [b.blob_id for b in table], new_ids, dropped, sizes)


def _rewrite(
    src: ImageSource, blob_dir: str, blobs: list[_Blob], members: list[int], index: int
) -> tuple[BlobInfo, str, int, dict[tuple[int, int], Chunk]]:
    """One new blob of the used chunks of blobs `members` (source blob-table indexes), in
    their order; returns its table entry, id, size and the chunks it holds, keyed by their
    old (blob index, ci index)."""
    sb = src.sb
    device = src.device
    assert device is not None
    out = AtomicFile(os.path.join(blob_dir, ".compact-blob"))
    writer = BlobWriter(out.open, index, sb.compressor, sb.digester, sb.chunk_size)
    targets: list[tuple[tuple[int, int], list[Chunk | None]]] = []
    try:
        for bi in members:
            used = blobs[bi].used
            refs = [ChunkRef(bi, ci, 0, used[ci].uncompressed_offset) for ci in sorted(used)]
            for start in range(0, len(refs), _BATCH):
                batch = refs[start : start + _BATCH]
                data = device.get_chunks(batch, kind="readahead")
                for r in batch:
                    piece = data[Key(bi, r.ci_index)]
                    targets.append(((bi, r.ci_index), writer.add_file(_reader(piece), len(piece))))
        writer.flush()
        res = writer.finish(blob_toc=True, inline_bootstrap=None)
        if res is None:
            raise BuildError("compactor: a rebuilt blob came out empty")
        out.commit(os.path.join(blob_dir, res.blob_id))
    except BaseException:
        writer.abort()
        out.discard()
        raise
    chunks: dict[tuple[int, int], Chunk] = {}
    for key, target in targets:
        (c,) = target
        assert c is not None
        chunks[key] = c
    return res.info, res.blob_id, res.size, chunks


def _reader(data: bytes) -> Callable[[int], bytes]:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        piece = data[pos : pos + n]
        pos += len(piece)
        return piece

    return read
