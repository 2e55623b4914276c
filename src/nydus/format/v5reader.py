"""RAFS v5 bootstrap reader over an in-memory buffer (bytes or mmap), rafs-format §7.

Inode numbers are the v5 `i_ino` values: the 1-based inode-table index of the first entry
of each hard-link group, so hard-linked names share an inode number and inode number *n*
lives at inode-table entry *n - 1*.
"""

from __future__ import annotations

import stat
import struct

from nydus.errors import FormatError
from nydus.format.constants import (
    MAX_NAME_LEN,
    BlobFeatures,
    FileType,
    SuperFlags,
    file_type_of,
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
from nydus.format.v5 import (
    U32,
    V5BlobEntry,
    V5ExtBlobEntry,
    V5Inode,
    V5SuperBlock,
    unpack_v5_blob_table,
    unpack_v5_xattrs,
)
from nydus.format.v6 import BlobInfo, ChunkInfo
from nydus.utils.lru import Lru


class RafsV5Super:
    """The `RafsSuper` protocol for a RAFS v5 bootstrap."""

    version = 5

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf
        # per-reader caches (they hold records only, never the reader: dropping the reader
        # frees them and its buffer)
        self._nodes: Lru[int, tuple[V5Inode, Attr]] = Lru(65536)  # by inode-table index
        self._dirs: Lru[int, DirIndex] = Lru(4096)
        self._chunk_table: list[ChunkInfo] | None = None
        self.sb = sb = V5SuperBlock.unpack(buf)
        self.flags = sb.flags
        self.chunk_size = sb.block_size
        # nydusd's defaults when a bit is missing: lz4_block, blake3 (rafs-format §2.4)
        self.compressor = flags_compressor(sb.flags)
        self.digester = flags_digester(sb.flags)
        self.root_ino = 1
        self.inode_count = sb.inodes_count
        n = sb.inode_table_entries
        self._table: tuple[int, ...] = struct.unpack_from(f"<{n}I", buf, sb.inode_table_offset)
        entries: list[V5BlobEntry] = []
        if sb.blob_table_size:
            entries = unpack_v5_blob_table(
                buf[sb.blob_table_offset : sb.blob_table_offset + sb.blob_table_size]
            )
        ext: list[V5ExtBlobEntry] = [
            V5ExtBlobEntry.unpack(buf, sb.extended_blob_table_offset + V5ExtBlobEntry.SIZE * i)
            for i in range(sb.extended_blob_table_entries)
        ]
        if ext and len(ext) != len(entries):
            raise FormatError(
                f"RAFS v5: {len(entries)} blobs but {len(ext)} extended blob table entries"
            )
        self.blob_entries = entries
        self.blobs: list[BlobInfo] = []
        for i, ent in enumerate(entries):
            e = ext[i] if ext else V5ExtBlobEntry(0, BlobFeatures(0), 0, 0)
            self.blobs.append(
                BlobInfo(
                    blob_id=ent.blob_id,
                    blob_index=i,
                    chunk_size=self.chunk_size,
                    chunk_count=e.chunk_count,
                    compressor=int(self.compressor),
                    digester=int(self.digester),
                    features=e.features,
                    compressed_size=e.compressed_size,
                    uncompressed_size=e.uncompressed_size,
                )
            )
        self._check_root()

    # ---- raw records -------------------------------------------------------------
    def _check_root(self) -> None:
        off = self.record_offset(1)
        root = V5Inode.unpack(self.buf, off)
        if root.name_size == 0 or stat.S_IFMT(root.mode) == 0:
            raise FormatError(
                "RAFS v5 bootstrap uses the legacy pre-release inode layout (root record at "
                f"{off} has mode 0o{root.mode:o} and name size {root.name_size}); this layout "
                "is not supported"
            )
        if not stat.S_ISDIR(root.mode):
            raise FormatError(f"RAFS v5: root inode (record at {off}) is not a directory")
        if root.ino != 1:
            raise FormatError(f"RAFS v5: root inode number is {root.ino}, expected 1")

    def record_offset(self, index: int) -> int:
        """Byte offset of the inode record at 1-based inode-table index `index`."""
        if not 1 <= index <= len(self._table):
            raise FormatError(
                f"RAFS v5: inode index {index} outside the inode table (1..{len(self._table)})"
            )
        off = self._table[index - 1] << 3  # entries store offset / 8
        if off < self.sb.inode_table_offset or off + V5Inode.SIZE > len(self.buf):
            raise FormatError(f"RAFS v5: inode {index} at offset {off} lies outside the bootstrap")
        return off

    def record(self, index: int) -> V5Inode:
        """The validated inode record at 1-based inode-table index `index` (cached per
        reader, with the `Attr` of inode number `index`)."""
        return self._nodes.get_or_load(index, self._load_node)[0]

    def _load_node(self, index: int) -> tuple[V5Inode, Attr]:
        rec = self._load_record(index)
        attr = Attr.of_record(
            index,
            rec.mode,
            rec.size,
            rec.uid,
            rec.gid,
            rec.mtime,
            rec.mtime_nsec,
            rec.nlink,
            rec.rdev,
        )
        return rec, attr

    def _load_record(self, index: int) -> V5Inode:
        off = self.record_offset(index)
        ino = V5Inode.unpack(self.buf, off)
        where = f"RAFS v5 inode {index} at {off}"
        if file_type_of(ino.mode) == FileType.UNKNOWN:
            raise FormatError(f"{where}: invalid mode 0o{ino.mode:o}")
        if not 0 < ino.name_size <= max(MAX_NAME_LEN, 1):
            raise FormatError(f"{where}: invalid name size {ino.name_size}")
        if ino.ino == 0:
            raise FormatError(f"{where}: inode number 0")
        why = inode_range_error(ino.uid, ino.gid, ino.mtime, ino.mtime_nsec, ino.size)
        if why is not None:
            raise FormatError(f"{where}: {why}")
        if (
            stat.S_ISDIR(ino.mode)
            and ino.child_count
            and ino.child_index + ino.child_count - 1 > len(self._table)
        ):
            raise FormatError(
                f"{where}: children {ino.child_index}+{ino.child_count} outside the inode table"
            )
        return ino

    def inode(self, ino: int) -> V5Inode:
        return self.record(ino)

    def _name(self, index: int) -> bytes:
        rec = self.record(index)
        off = self.record_offset(index) + rec.name_offset
        return bytes(self.buf[off : off + rec.name_size])

    # ---- RafsSuper protocol --------------------------------------------------------
    def attr(self, ino: int) -> Attr:
        return self._nodes.get_or_load(ino, self._load_node)[1]

    def directory(self, ino: int) -> DirIndex:
        """The entries of directory `ino` (no `.` and `..` in v5; cached per reader)."""
        return self._dirs.get_or_load(ino, self._load_directory)

    def _load_directory(self, ino: int) -> DirIndex:
        rec = self.record(ino)
        if not stat.S_ISDIR(rec.mode):
            raise FormatError(f"RAFS v5 inode {ino} is not a directory")
        out = []
        for idx in range(rec.child_index, rec.child_index + rec.child_count):
            child = self.record(idx)
            name = self._name(idx)
            if name in (b".", b"..") or b"/" in name or b"\0" in name:
                shown = name[:64].decode("utf-8", "backslashreplace")
                raise FormatError(f"RAFS v5 directory {ino}: invalid entry name {shown!r}")
            out.append((name, child.ino, file_type_of(child.mode)))
        index = DirIndex.of(out)
        if index is None:
            raise FormatError(f"RAFS v5 directory {ino}: children are not sorted or repeat a name")
        return index

    def readdir(self, ino: int) -> list[DirEntry]:
        return list(self.directory(ino).children)

    def lookup(self, parent: int, name: bytes) -> int | None:
        return self._dirs.get_or_load(parent, self._load_directory).find(name)

    def parent(self, ino: int) -> int:
        """Inode number of the directory holding `ino` (the root for the root)."""
        p = self.record(ino).parent
        return p or self.root_ino

    def readlink(self, ino: int) -> bytes:
        rec = self.record(ino)
        if not stat.S_ISLNK(rec.mode):
            raise FormatError(f"RAFS v5 inode {ino} is not a symlink")
        off = self.record_offset(ino) + rec.symlink_offset
        return bytes(self.buf[off : off + rec.symlink_size])

    def _xattrs_and_end(self, ino: int) -> tuple[dict[bytes, bytes], int]:
        rec = self.record(ino)
        off = self.record_offset(ino) + rec.xattr_offset
        if not rec.has_xattrs:
            return {}, off
        xattrs, used = unpack_v5_xattrs(self.buf, off)
        return xattrs, off + used

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self._xattrs_and_end(ino)[0]

    def chunk_infos(self, ino: int) -> list[ChunkInfo]:
        rec = self.record(ino)
        if not stat.S_ISREG(rec.mode):
            raise FormatError(f"RAFS v5 inode {ino} is not a regular file")
        _, off = self._xattrs_and_end(ino)
        n = rec.child_count
        if off + ChunkInfo.SIZE * n > len(self.buf):
            raise FormatError(f"RAFS v5 inode {ino}: chunk infos beyond the end of the bootstrap")
        out = [ChunkInfo.unpack(self.buf, off + ChunkInfo.SIZE * i) for i in range(n)]
        for c in out:
            if c.blob_index >= len(self.blobs):
                raise FormatError(
                    f"RAFS v5 inode {ino}: chunk refers to blob {c.blob_index} of {len(self.blobs)}"
                )
        return out

    def chunks(self, ino: int) -> list[ChunkRef]:
        return [
            ChunkRef(
                c.blob_index,
                c.index,
                c.file_offset,
                c.uncompressed_offset,
                c.uncompressed_size,
                c.compressed_offset,
                c.compressed_size,
                c.compressed,
                c.digest,
            )
            for c in self.chunk_infos(ino)
        ]

    def chunk_table(self) -> list[ChunkInfo]:
        """Every distinct chunk (by blob index and chunk index) referenced by a file
        (collected once per reader)."""
        if self._chunk_table is None:
            self._chunk_table = self._collect_chunks()
        return self._chunk_table

    def _collect_chunks(self) -> list[ChunkInfo]:
        seen: dict[tuple[int, int], ChunkInfo] = {}
        for idx in range(1, len(self._table) + 1):
            rec = self.record(idx)
            if stat.S_ISREG(rec.mode) and rec.ino == idx:
                for c in self.chunk_infos(idx):
                    seen.setdefault((c.blob_index, c.index), c)
        return sorted(seen.values(), key=lambda c: (c.digest, c.blob_index))

    def prefetch_inos(self) -> list[int]:
        off, n = self.sb.prefetch_table_offset, self.sb.prefetch_table_entries
        out = []
        for (ino,) in U32.iter_unpack(self.buf[off : off + U32.size * n]):
            if ino == 0:
                break
            out.append(ino)
        return out

    @property
    def explicit_uid_gid(self) -> bool:
        return bool(self.flags & SuperFlags.EXPLICIT_UID_GID)


__all__ = ["RafsV5Super", "file_type_of"]
