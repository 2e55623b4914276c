"""RAFS v6 bootstrap writer: lays out a `Node` tree as an EROFS image whose regular
files are chunk-based with 8-byte chunk indexes pointing into the blobs.

Layout (see rafs-format.md §3 and §5): superblocks, device slots, blob table,
prefetch table, an empty block, inodes in BFS order on 32-byte slots (root nid 128)
with inline xattrs, inline directory/symlink tails and chunk index arrays, then full
directory/symlink data blocks, then the chunk info table.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass

from nydus.builder.tree import Chunk, InodeData, Node
from nydus.errors import BuildError
from nydus.format import layout
from nydus.format.constants import (
    BLOCK_SIZE,
    COMPRESSOR_FLAG,
    DIGESTER_FLAG,
    EROFS_SUPER_OFFSET,
    EXT_SUPER_OFFSET,
    MAPPED_BLKADDR_ALIGN,
    MAX_BLOBS,
    BlobFeatures,
    ChunkFlags,
    FileType,
    InodeLayout,
    SuperFlags,
    align,
)
from nydus.format.v6 import (
    BlobInfo,
    ChunkAddr,
    ChunkInfo,
    DeviceSlot,
    Dirent,
    ExtSuperBlock,
    Inode,
    SuperBlock,
    chunk_format,
    pack_dir_blocks,
    pack_xattrs,
    rdev_to_erofs,
    xattr_icount,
)
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester


@dataclass(slots=True, eq=False)
class _Rec:
    """Placement of one on-disk inode."""

    data: InodeData
    xattrs: bytes
    layout: InodeLayout = InodeLayout.FLAT_PLAIN
    pos: int = 0  # absolute offset of the inode
    nid: int = 0
    ino: int = 0
    nlink: int = 1
    size: int = 0
    content: bytes = b""  # directory or symlink data
    node: Node | None = None  # directory node (for dirents)
    parent_rec: _Rec | None = None
    blkaddr: int = 0  # first full data block (flat layouts)

    @property
    def tail(self) -> int:
        return self.size % BLOCK_SIZE if self.layout == InodeLayout.FLAT_INLINE else 0

    @property
    def full_blocks(self) -> int:
        if self.layout == InodeLayout.FLAT_INLINE:
            return self.size // BLOCK_SIZE
        if self.layout == InodeLayout.FLAT_PLAIN and self.content:
            return (self.size + BLOCK_SIZE - 1) // BLOCK_SIZE
        return 0


@dataclass(frozen=True, slots=True)
class BootstrapOptions:
    chunk_size: int
    compressor: Compressor
    digester: Digester
    explicit_uid_gid: bool = True
    # chunk blob index -> blob table index as written (None: the same); lets a merge write
    # a blob table in its own order without renumbering every chunk of the tree
    blob_map: Sequence[int] | None = None


def super_flags(opts: BootstrapOptions, blobs: list[BlobInfo], has_xattr: bool) -> SuperFlags:
    flags = COMPRESSOR_FLAG[opts.compressor] | DIGESTER_FLAG[opts.digester]
    flags |= SuperFlags.ENCRYPTION_NONE
    if opts.explicit_uid_gid:
        flags |= SuperFlags.EXPLICIT_UID_GID
    if has_xattr:
        flags |= SuperFlags.HAS_XATTR
    if blobs and all(b.features & BlobFeatures.INLINED_CHUNK_DIGEST for b in blobs):
        flags |= SuperFlags.INLINED_CHUNK_DIGEST
    return flags


def write_bootstrap(
    root: Node, blobs: list[BlobInfo], opts: BootstrapOptions, prefetch: list[Node] | None = None
) -> bytes:
    """Serialise the tree. `blobs` are the blob table entries in index order."""
    if len(blobs) > MAX_BLOBS:
        raise BuildError(f"too many blobs: {len(blobs)} (RAFS v6 allows {MAX_BLOBS})")
    if root.children is None:
        raise BuildError("the root of an image must be a directory")
    recs, order = _collect(root, opts)
    _number_inodes(root, recs)

    nblobs = len(blobs)
    blob_table_off = layout.blob_table_start(nblobs)
    prefetch_nodes = prefetch or []
    prefetch_size = layout.PREFETCH_ENTRY.size * len(prefetch_nodes) if nblobs else 0
    pt_off = layout.blob_entry_offset(blob_table_off, nblobs)  # right after the blob table
    meta_blkaddr = align(pt_off + prefetch_size, BLOCK_SIZE) // BLOCK_SIZE if nblobs else 0
    meta_base = layout.meta_base(meta_blkaddr)

    # ---- place inodes ----
    cursor = meta_base + BLOCK_SIZE
    for rec in order:
        isize = Inode.EXT_SIZE + len(rec.xattrs)
        pos = align(cursor, layout.INODE_SLOT)
        if rec.tail and (pos + isize) // BLOCK_SIZE != (pos + isize + rec.tail - 1) // BLOCK_SIZE:
            pos = align(pos + 1, BLOCK_SIZE) if pos % BLOCK_SIZE else pos
        rec.pos = pos
        rec.nid = layout.nid_of(meta_blkaddr, pos)
        if rec.layout == InodeLayout.CHUNK_BASED:
            nchunks = layout.chunk_count(rec.size, opts.chunk_size)
            end = layout.chunk_index_offset(pos, Inode.EXT_SIZE, len(rec.xattrs))
            cursor = end + ChunkAddr.SIZE * nchunks
        else:
            cursor = layout.inode_tail_offset(pos, Inode.EXT_SIZE, len(rec.xattrs)) + rec.tail
    if order[0].nid > 0xFFFF:
        raise BuildError("root inode does not fit a 16-bit nid")
    # ---- full data blocks of directories and symlinks ----
    block = align(cursor, BLOCK_SIZE) // BLOCK_SIZE
    for rec in order:
        if rec.full_blocks:
            rec.blkaddr = block
            block += rec.full_blocks
    chunk_table = _chunk_table(order, opts)
    chunk_table_off = block * BLOCK_SIZE
    total = align(layout.chunk_info_offset(chunk_table_off, len(chunk_table)), BLOCK_SIZE)
    if not chunk_table:
        total = max(total, chunk_table_off)
    out = bytearray(total)

    # ---- directories' content now that nids are known ----
    for rec in order:
        if rec.node is not None:
            rec.content = _dir_content(rec, recs)
    for rec in order:
        _write_inode(out, rec, opts)
    for i, info in enumerate(chunk_table):
        off = layout.chunk_info_offset(chunk_table_off, i)
        out[off : off + ChunkInfo.SIZE] = info.pack()

    # ---- tables and superblocks ----
    mapped = align(total, MAPPED_BLKADDR_ALIGN) // BLOCK_SIZE
    for i, b in enumerate(blobs):
        if b.blob_index != i:
            raise BuildError(f"blob table entry {i} has index {b.blob_index}")
        blocks = b.uncompressed_size // BLOCK_SIZE
        slot = DeviceSlot(b.blob_id, blocks, mapped)
        off = layout.device_slot_offset(i)
        out[off : off + DeviceSlot.SIZE] = slot.pack()
        mapped = align((mapped + blocks) * BLOCK_SIZE, MAPPED_BLKADDR_ALIGN) // BLOCK_SIZE
        off = layout.blob_entry_offset(blob_table_off, i)
        out[off : off + BlobInfo.SIZE] = b.pack()
    if prefetch_size:
        for i, node in enumerate(prefetch_nodes):
            nid = recs[id(node.inode)].nid
            layout.PREFETCH_ENTRY.pack_into(out, layout.prefetch_entry_offset(pt_off, i), nid)
    has_xattr = any(r.xattrs for r in order)
    ext = ExtSuperBlock(
        flags=super_flags(opts, blobs, has_xattr),
        blob_table_offset=blob_table_off,
        blob_table_size=BlobInfo.SIZE * nblobs,
        chunk_size=opts.chunk_size,
        chunk_table_offset=chunk_table_off if chunk_table else 0,
        chunk_table_size=ChunkInfo.SIZE * len(chunk_table),
        prefetch_table_offset=pt_off if prefetch_size else 0,
        prefetch_table_size=prefetch_size,
    )
    inos = _count_entries(root)
    sb = SuperBlock(
        root_nid=order[0].nid,
        inos=inos,
        blocks=sum(b.uncompressed_size // BLOCK_SIZE for b in blobs),
        meta_blkaddr=meta_blkaddr,
        extra_devices=nblobs,
    )
    out[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + SuperBlock.SIZE] = sb.pack()
    out[EXT_SUPER_OFFSET : EXT_SUPER_OFFSET + ExtSuperBlock.SIZE] = ext.pack()
    return bytes(out)


def _collect(root: Node, opts: BootstrapOptions) -> tuple[dict[int, _Rec], list[_Rec]]:
    """One record per distinct inode, in BFS order of first appearance."""
    recs: dict[int, _Rec] = {}
    order: list[_Rec] = []

    def add(node: Node, parent: _Rec | None) -> _Rec:
        key = id(node.inode)
        rec = recs.get(key)
        if rec is not None:
            rec.nlink += 1
            return rec
        data = node.inode
        if node.children is not None and not data.is_dir:
            raise BuildError("directory node without a directory mode")
        rec = _Rec(data, pack_xattrs(data.xattrs))
        if node.children is not None:
            rec.node = node
            rec.parent_rec = parent
            names = [b".", b"..", *list(node.children)]
            _, rec.size = pack_dir_blocks(Dirent(0, 0, n) for n in sorted(names))
            rec.nlink = 2 + sum(1 for c in node.children.values() if c.children is not None)
            rec.content = b"\0" * rec.size  # placeholder until nids are known
        elif stat.S_ISLNK(data.mode):
            rec.content = data.symlink
            rec.size = len(data.symlink)
        elif stat.S_ISREG(data.mode):
            rec.layout = InodeLayout.CHUNK_BASED
            rec.size = data.size
        if rec.content:
            tail = rec.size % BLOCK_SIZE
            if tail and Inode.EXT_SIZE + len(rec.xattrs) + tail <= BLOCK_SIZE:
                rec.layout = InodeLayout.FLAT_INLINE
        recs[key] = rec
        order.append(rec)
        return rec

    queue: list[tuple[Node, _Rec | None]] = [(root, None)]
    head = 0
    while head < len(queue):
        node, parent = queue[head]
        head += 1
        rec = add(node, parent)
        if node.children is not None and rec.node is node:
            for child in node.sorted_children():
                if child.children is not None:
                    queue.append((child, rec))
                else:
                    add(child, rec)
    # nlink of regular files counts the names; we counted 1 + extra links already
    for rec in order:
        if not rec.data.is_reg and rec.node is None:
            rec.nlink = 1
    return recs, order


def _number_inodes(root: Node, recs: dict[int, _Rec]) -> None:
    """i_ino per rafs-format §5: children numbered per directory, then recurse."""
    counter = 1
    recs[id(root.inode)].ino = 1
    stack = [root]
    while stack:
        d = stack.pop()
        subdirs = []
        for child in d.sorted_children():
            counter += 1
            rec = recs[id(child.inode)]
            if rec.ino == 0:
                rec.ino = counter
            if child.children is not None:
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def _count_entries(root: Node) -> int:
    n = 1
    stack = [root]
    while stack:
        d = stack.pop()
        assert d.children is not None
        n += len(d.children)
        stack.extend(c for c in d.children.values() if c.children is not None)
    return n


def _dir_content(rec: _Rec, recs: dict[int, _Rec]) -> bytes:
    node = rec.node
    assert node is not None and node.children is not None
    parent = rec.parent_rec or rec
    ents = [Dirent(rec.nid, FileType.DIR, b"."), Dirent(parent.nid, FileType.DIR, b"..")]
    for name, child in node.children.items():
        ents.append(Dirent(recs[id(child.inode)].nid, child.inode.file_type, name))
    ents.sort(key=lambda d: d.name)
    blocks, size = pack_dir_blocks(ents)
    assert size == rec.size
    return b"".join(blocks)


def _write_inode(out: bytearray, rec: _Rec, opts: BootstrapOptions) -> None:
    d = rec.data
    if rec.layout == InodeLayout.CHUNK_BASED:
        i_u = chunk_format(opts.chunk_size)
    elif stat.S_ISCHR(d.mode) or stat.S_ISBLK(d.mode):
        i_u = rdev_to_erofs(d.rdev)
    elif rec.full_blocks:
        i_u = rec.blkaddr
    else:
        i_u = 0
    uid, gid = (d.uid, d.gid) if opts.explicit_uid_gid else (0, 0)
    mtime, nsec = d.mtime, d.mtime_nsec
    if rec.node is not None and rec.parent_rec is None:
        mtime, nsec = 0, 0  # root mtime zeroed for reproducibility
    size = rec.size if (rec.content or rec.layout == InodeLayout.CHUNK_BASED) else 0
    inode = Inode(
        rec.layout,
        xattr_icount(len(rec.xattrs)),
        d.mode,
        size,
        i_u,
        rec.ino,
        uid,
        gid,
        mtime,
        nsec,
        rec.nlink,
    )
    pos = rec.pos
    out[pos : pos + Inode.EXT_SIZE] = inode.pack()
    xpos = pos + Inode.EXT_SIZE
    out[xpos : xpos + len(rec.xattrs)] = rec.xattrs
    if rec.layout == InodeLayout.CHUNK_BASED:
        pos = layout.chunk_index_offset(pos, Inode.EXT_SIZE, len(rec.xattrs))
        expected = layout.chunk_count(rec.size, opts.chunk_size)
        if len(d.chunks) != expected:
            raise BuildError(
                f"file of {rec.size} bytes has {len(d.chunks)} chunks, expected {expected}"
            )
        bmap = opts.blob_map
        for c in d.chunks:
            out[pos : pos + ChunkAddr.SIZE] = ChunkAddr(
                c.blob_index if bmap is None else bmap[c.blob_index],
                c.ci_index,
                c.uncompressed_offset // BLOCK_SIZE,
            ).pack()
            pos += ChunkAddr.SIZE
        return
    content = rec.content
    nfull = rec.full_blocks
    if nfull:
        start = rec.blkaddr * BLOCK_SIZE
        body = content[: nfull * BLOCK_SIZE] if rec.layout == InodeLayout.FLAT_INLINE else content
        out[start : start + len(body)] = body
    if rec.tail:
        tail = content[nfull * BLOCK_SIZE :]
        tpos = layout.inode_tail_offset(pos, Inode.EXT_SIZE, len(rec.xattrs))
        out[tpos : tpos + len(tail)] = tail


def _chunk_table(order: list[_Rec], opts: BootstrapOptions) -> list[ChunkInfo]:
    """One record per distinct (digest, blob) pair, sorted by digest then blob index."""
    seen: dict[tuple[bytes, int], ChunkInfo] = {}
    bmap = opts.blob_map
    for rec in order:
        if rec.layout != InodeLayout.CHUNK_BASED:
            continue
        for i, c in enumerate(rec.data.chunks):
            bi = c.blob_index if bmap is None else bmap[c.blob_index]
            key = (c.digest, bi)
            if key not in seen:
                seen[key] = _chunk_info(c, bi, i * opts.chunk_size)
    return [seen[k] for k in sorted(seen)]


def _chunk_info(c: Chunk, blob_index: int, file_offset: int) -> ChunkInfo:
    return ChunkInfo(
        c.digest,
        blob_index,
        ChunkFlags.COMPRESSED if c.compressed else ChunkFlags(0),
        c.compressed_size,
        c.uncompressed_size,
        c.compressed_offset,
        c.uncompressed_offset,
        file_offset,
        c.ci_index,
        0,
    )
