"""RAFS v6 bootstrap reader over an in-memory buffer (bytes or mmap)."""

from __future__ import annotations

import stat
from typing import Any

from nydus.errors import FormatError
from nydus.format import layout
from nydus.format.constants import (
    BLOCK_BITS,
    BLOCK_SIZE,
    EROFS_SUPER_OFFSET,
    EXT_SUPER_OFFSET,
    SUPER_COMPRESSION_FLAGS,
    SUPER_FLAGS_KNOWN,
    SUPER_HASH_FLAGS,
    FileType,
    InodeLayout,
    file_type_of,
    valid_chunk_size,
)
from nydus.format.rafs import (
    Attr,
    ChunkRef,
    DirEntry,
    DirIndex,
    flags_compressor,
    flags_digester,
    inode_range_error,
)
from nydus.format.v6 import (
    CHUNK_COMPRESSED,
    RAW_BLOB_INDEX,
    RAW_COMPRESSED_OFFSET,
    RAW_COMPRESSED_SIZE,
    RAW_DIGEST,
    RAW_FLAGS,
    RAW_INDEX,
    RAW_UNCOMPRESSED_OFFSET,
    RAW_UNCOMPRESSED_SIZE,
    BlobInfo,
    ChunkAddr,
    ChunkInfo,
    DeviceSlot,
    ExtSuperBlock,
    Inode,
    SuperBlock,
    unpack_dir_block,
    unpack_xattrs,
)
from nydus.utils.lru import Lru


class RafsV6Super:
    version = 6

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf
        # per-reader caches (they hold records only, never the reader: dropping the reader
        # frees them and its buffer)
        self._nodes: Lru[int, tuple[Inode, Attr]] = Lru(65536)  # by nid
        self._dirs: Lru[int, DirIndex] = Lru(4096)
        self._chunk_table: list[ChunkInfo] | None = None
        #: chunk table records as raw tuples (ChunkInfo field order) by (blob, chunk index)
        self._chunk_by_key: dict[tuple[int, int], tuple[Any, ...]] | None = None
        size = len(buf)
        if size < BLOCK_SIZE or size % BLOCK_SIZE:
            raise FormatError(
                f"not a valid RAFS v6 bootstrap: size {size} is not a non-zero multiple of 4096"
            )
        self.sb = SuperBlock.unpack(buf[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + SuperBlock.SIZE])
        if self.sb.blkszbits != BLOCK_BITS:
            raise FormatError("RAFS v6 TARFS mode (512-byte blocks) is not supported")
        self.ext = ext = ExtSuperBlock.unpack(
            buf[EXT_SUPER_OFFSET : EXT_SUPER_OFFSET + ExtSuperBlock.SIZE]
        )
        self.flags = ext.flags
        if ext.flags & ~SUPER_FLAGS_KNOWN & 0xFFFF_FFFF_FFFF_FFFF:
            raise FormatError(f"RAFS v6 superblock: unknown flags 0x{ext.flags:x}")
        comp_bits = int(ext.flags & SUPER_COMPRESSION_FLAGS)
        hash_bits = int(ext.flags & SUPER_HASH_FLAGS)
        if comp_bits.bit_count() != 1 or hash_bits.bit_count() != 1:
            raise FormatError(
                f"RAFS v6 superblock: flags 0x{ext.flags:x} must name exactly one "
                "compressor and one digester"
            )
        self.compressor = flags_compressor(ext.flags)
        self.digester = flags_digester(ext.flags)
        self.chunk_size = ext.chunk_size
        if not valid_chunk_size(ext.chunk_size):
            raise FormatError(
                f"RAFS v6 superblock: chunk size 0x{ext.chunk_size:x} is not a power of two "
                "between 0x1000 and 0x1000000"
            )
        if layout.meta_base(self.sb.meta_blkaddr) > size:
            raise FormatError("RAFS v6 superblock: meta_blkaddr beyond the end of the file")
        self.meta_base = layout.meta_base(self.sb.meta_blkaddr)
        self.root_ino = self.sb.root_nid
        self.inode_count = self.sb.inos
        nblobs = self.sb.extra_devices
        if layout.device_slot_offset(nblobs) > size:
            raise FormatError(
                f"RAFS v6 superblock: {nblobs} device slots do not fit in the bootstrap"
            )
        self.devices = [DeviceSlot.unpack(buf, layout.device_slot_offset(i)) for i in range(nblobs)]
        if ext.blob_table_size != BlobInfo.SIZE * nblobs:
            raise FormatError(
                f"RAFS v6: blob table size {ext.blob_table_size} does not match "
                f"{nblobs} device slots"
            )
        bt = ext.blob_table_offset
        if nblobs and (bt % BLOCK_SIZE or bt < BLOCK_SIZE or bt + ext.blob_table_size > size):
            raise FormatError(f"RAFS v6: blob table offset {bt} invalid")
        self.blobs = [BlobInfo.unpack(buf, layout.blob_entry_offset(bt, i)) for i in range(nblobs)]
        for i, b in enumerate(self.blobs):
            b.validate(i, self.chunk_size)
            if self.devices[i].blob_id != b.blob_id:
                raise FormatError(
                    f"RAFS v6: device slot {i} id {self.devices[i].blob_id} != "
                    f"blob table id {b.blob_id}"
                )
            if self.devices[i].blocks == 0:
                raise FormatError(f"RAFS v6: device slot {i} has 0 blocks")
        if len({b.blob_id for b in self.blobs}) != nblobs:
            raise FormatError("RAFS v6: duplicate blob ids in the blob table")
        if nblobs == 0 and self.sb.blocks not in (0, 4096):
            raise FormatError("RAFS v6: superblock blocks must be 0 without blobs")
        if ext.chunk_table_size and (
            ext.chunk_table_offset % BLOCK_SIZE
            or ext.chunk_table_size % ChunkInfo.SIZE
            or ext.chunk_table_offset + ext.chunk_table_size > size
        ):
            raise FormatError("RAFS v6: chunk table position/size invalid")
        if (
            ext.prefetch_table_size
            and ext.prefetch_table_offset
            and (
                ext.prefetch_table_size % layout.PREFETCH_ENTRY.size
                or ext.prefetch_table_offset + ext.prefetch_table_size > size
            )
        ):
            raise FormatError("RAFS v6: prefetch table position/size invalid")
        # validate the root
        root = self.inode(self.root_ino)
        if not stat.S_ISDIR(root.mode):
            raise FormatError(f"RAFS v6: root nid {self.root_ino} is not a directory")

    # ---- raw records -------------------------------------------------------------
    def inode_offset(self, nid: int) -> int:
        return layout.inode_offset(self.sb.meta_blkaddr, nid)

    def inode(self, nid: int) -> Inode:
        """The inode record at `nid` (cached per reader, with its `Attr`)."""
        return self._nodes.get_or_load(nid, self._load_node)[0]

    def _load_node(self, nid: int) -> tuple[Inode, Attr]:
        off = self.inode_offset(nid)
        if nid < 0 or off + Inode.COMPACT_SIZE > len(self.buf):
            raise FormatError(f"nid {nid} points outside the bootstrap")
        ino = Inode.unpack(self.buf, off)
        if file_type_of(ino.mode) == FileType.UNKNOWN:
            raise FormatError(f"nid {nid}: invalid file mode 0o{ino.mode:o}")
        why = inode_range_error(ino.uid, ino.gid, ino.mtime, ino.mtime_nsec, ino.size)
        if why is not None:
            raise FormatError(f"nid {nid}: {why}")
        attr = Attr.of_record(
            nid, ino.mode, ino.size, ino.uid, ino.gid, ino.mtime, ino.mtime_nsec, ino.nlink, ino.i_u
        )
        return ino, attr

    def _data(self, nid: int) -> bytes:
        """Content of a flat (directory or symlink) inode."""
        ino = self.inode(nid)
        size = ino.size
        if ino.layout == InodeLayout.FLAT_PLAIN:
            start = ino.i_u * BLOCK_SIZE
            if start + size > len(self.buf):
                raise FormatError(f"nid {nid}: data block beyond the end of the bootstrap")
            return bytes(self.buf[start : start + size])
        if ino.layout == InodeLayout.FLAT_INLINE:
            tail = size % BLOCK_SIZE
            nfull = size // BLOCK_SIZE
            start = ino.i_u * BLOCK_SIZE
            if nfull and start + nfull * BLOCK_SIZE > len(self.buf):
                raise FormatError(f"nid {nid}: data blocks beyond the end of the bootstrap")
            head = bytes(self.buf[start : start + nfull * BLOCK_SIZE]) if nfull else b""
            toff = layout.inode_tail_offset(self.inode_offset(nid), ino.inode_size, ino.xattr_size)
            if toff + tail > len(self.buf) or (
                tail and toff // BLOCK_SIZE != (toff + tail - 1) // BLOCK_SIZE
            ):
                raise FormatError(f"nid {nid}: inline tail crosses a block or the file end")
            return head + bytes(self.buf[toff : toff + tail])
        raise FormatError(f"nid {nid}: not a flat inode")

    # ---- RafsSuper protocol --------------------------------------------------------
    def attr(self, nid: int) -> Attr:
        return self._nodes.get_or_load(nid, self._load_node)[1]

    def directory(self, nid: int) -> DirIndex:
        """All entries of directory `nid`, `.` and `..` included (cached per reader)."""
        return self._dirs.get_or_load(nid, self._load_directory)

    def _load_directory(self, nid: int) -> DirIndex:
        ino = self.inode(nid)
        if not stat.S_ISDIR(ino.mode):
            raise FormatError(f"nid {nid} is not a directory")
        data = self._data(nid)
        out: list[tuple[bytes, int, int]] = []
        for off in range(0, len(data), BLOCK_SIZE):
            used = min(BLOCK_SIZE, len(data) - off)
            for d in unpack_dir_block(data[off : off + used], used):
                out.append((d.name, d.nid, d.file_type))
        index = DirIndex.of(out)
        if index is None:
            raise FormatError(f"directory nid {nid}: entries are not sorted or repeat a name")
        return index

    def readdir(self, nid: int) -> list[DirEntry]:
        return list(self.directory(nid).children)

    def lookup(self, parent: int, name: bytes) -> int | None:
        return self._dirs.get_or_load(parent, self._load_directory).find(name)

    def parent(self, nid: int) -> int:
        """Nid of the directory holding directory `nid`: its `..` entry (the root's is the
        root)."""
        return self.lookup(nid, b"..") or self.root_ino

    def readlink(self, nid: int) -> bytes:
        ino = self.inode(nid)
        if not stat.S_ISLNK(ino.mode):
            raise FormatError(f"nid {nid} is not a symlink")
        return self._data(nid)

    def xattrs(self, nid: int) -> dict[bytes, bytes]:
        ino = self.inode(nid)
        if not ino.xattr_icount:
            return {}
        return unpack_xattrs(self.buf, self.inode_offset(nid) + ino.inode_size, ino.xattr_size)

    def chunk_addrs(self, nid: int) -> list[ChunkAddr]:
        ino = self.inode(nid)
        if ino.layout != InodeLayout.CHUNK_BASED:
            if stat.S_ISREG(ino.mode) and ino.size == 0:
                return []
            raise FormatError(f"nid {nid}: regular file without chunk-based layout")
        n = layout.chunk_count(ino.size, self.chunk_size)
        base = layout.chunk_index_offset(self.inode_offset(nid), ino.inode_size, ino.xattr_size)
        if base + ChunkAddr.SIZE * n > len(self.buf):
            raise FormatError(f"nid {nid}: chunk index array beyond the end of the bootstrap")
        addrs = [ChunkAddr.unpack(self.buf, base + ChunkAddr.SIZE * i) for i in range(n)]
        for a in addrs:
            if a.blob_index >= len(self.blobs):
                raise FormatError(
                    f"nid {nid}: chunk refers to blob {a.blob_index} of {len(self.blobs)}"
                )
        return addrs

    def chunks(self, nid: int) -> list[ChunkRef]:
        table = self._chunk_map()
        out = []
        for i, a in enumerate(self.chunk_addrs(nid)):
            info = table.get((a.blob_index, a.ci_index))
            if info is None:
                out.append(
                    ChunkRef(a.blob_index, a.ci_index, i * self.chunk_size, a.blkaddr * BLOCK_SIZE)
                )
            else:
                out.append(
                    ChunkRef(
                        a.blob_index,
                        a.ci_index,
                        i * self.chunk_size,
                        info[RAW_UNCOMPRESSED_OFFSET],
                        info[RAW_UNCOMPRESSED_SIZE],
                        info[RAW_COMPRESSED_OFFSET],
                        info[RAW_COMPRESSED_SIZE],
                        bool(info[RAW_FLAGS] & CHUNK_COMPRESSED),
                        info[RAW_DIGEST],
                    )
                )
        return out

    def chunk_table(self) -> list[ChunkInfo]:
        """The bootstrap's chunk table (parsed once per reader)."""
        table = self._chunk_table
        if table is None:
            off, size = self.ext.chunk_table_offset, self.ext.chunk_table_size
            table = [
                ChunkInfo.unpack(self.buf, layout.chunk_info_offset(off, i))
                for i in range(size // ChunkInfo.SIZE)
            ]
            self._chunk_table = table
        return table

    def _chunk_map(self) -> dict[tuple[int, int], tuple[Any, ...]]:
        """The chunk table by (blob index, chunk index), as raw records (built once per
        reader, in C: the first file read of a large image must not wait for it)."""
        m = self._chunk_by_key
        if m is None:
            off, size = self.ext.chunk_table_offset, self.ext.chunk_table_size
            view = memoryview(self.buf)[off : off + size - size % ChunkInfo.SIZE]
            m = {(t[RAW_BLOB_INDEX], t[RAW_INDEX]): t for t in ChunkInfo.STRUCT.iter_unpack(view)}
            self._chunk_by_key = m
        return m

    def prefetch_inos(self) -> list[int]:
        off, size = self.ext.prefetch_table_offset, self.ext.prefetch_table_size
        if not off or not size:
            return []
        out = []
        for (nid,) in layout.PREFETCH_ENTRY.iter_unpack(self.buf[off : off + size]):
            if nid == 0:
                break
            out.append(nid)
        return out
