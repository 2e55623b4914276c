"""RAFS v5 bootstrap records (rafs-format §7): superblock, blob tables, inode record,
xattr table. Pure bytes -> dataclasses; the 80-byte chunk info is `v6.ChunkInfo`."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import ClassVar

from nydus.errors import FormatError
from nydus.format.constants import (
    RAFS_V5_MAGIC,
    RAFS_V5_VERSION,
    BlobFeatures,
    SuperFlags,
    valid_chunk_size,
)

U32 = struct.Struct("<I")  # an inode table or prefetch table entry


class V5InodeFlags(IntFlag):
    """The v5 inode record's u64 `i_flags` (rafs-format §7.4)."""

    SYMLINK = 0x1
    HARDLINK = 0x2
    XATTR = 0x4  # an xattr table follows the name (and symlink target)
    HAS_HOLE = 0x8


_INODE_FLAGS: dict[int, V5InodeFlags] = {}
_XATTR = int(V5InodeFlags.XATTR)  # an int copy: IntFlag operators cost ~20x an int's


def _inode_flags(value: int) -> V5InodeFlags:
    """`V5InodeFlags(value)`, memoised (records hold few distinct values)."""
    flags = _INODE_FLAGS.get(value)
    if flags is None:
        flags = _INODE_FLAGS[value] = V5InodeFlags(value)
    return flags


def align8(x: int) -> int:
    return (x + 7) & ~7


@dataclass(frozen=True, slots=True)
class V5SuperBlock:
    """RAFS v5 superblock, 8192 bytes at offset 0 (only the first 80 are meaningful)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIIQQQQQIIIIQ")
    SIZE: ClassVar[int] = 8192  # bytes on disk: STRUCT's 80, then reserved zeros
    block_size: int  # u32, bytes: the chunk size
    flags: SuperFlags  # u64, RafsSuperFlags
    inodes_count: int  # u64, unique inodes (older builders leave the root out)
    inode_table_offset: int  # u64, bytes from the file start (8192)
    prefetch_table_offset: int  # u64, bytes from the file start
    blob_table_offset: int  # u64, bytes from the file start
    inode_table_entries: int  # u32, tree entries (each hard link has its own)
    prefetch_table_entries: int  # u32, u32 inode numbers
    blob_table_size: int  # u32, bytes (8-aligned)
    extended_blob_table_entries: int  # u32, V5ExtBlobEntry records
    extended_blob_table_offset: int  # u64, bytes from the file start
    magic: int = RAFS_V5_MAGIC  # u32, RAFS_V5_MAGIC
    version: int = RAFS_V5_VERSION  # u32, fs_version: RAFS_V5_VERSION
    sb_size: int = SIZE  # u32, bytes: 8192

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> V5SuperBlock:
        if len(buf) < cls.SIZE:
            raise FormatError(
                f"not a RAFS v5 bootstrap: {len(buf)} bytes is shorter than the "
                f"{cls.SIZE}-byte superblock"
            )
        (
            magic,
            version,
            sb_size,
            block_size,
            flags,
            inodes_count,
            it_off,
            pt_off,
            bt_off,
            it_entries,
            pt_entries,
            bt_size,
            ebt_entries,
            ebt_off,
        ) = cls.STRUCT.unpack_from(buf, 0)
        sb = cls(
            block_size,
            SuperFlags(flags),
            inodes_count,
            it_off,
            pt_off,
            bt_off,
            it_entries,
            pt_entries,
            bt_size,
            ebt_entries,
            ebt_off,
            magic,
            version,
            sb_size,
        )
        sb.validate(len(buf))
        return sb

    def validate(self, file_size: int) -> None:
        if self.magic != RAFS_V5_MAGIC or self.version != RAFS_V5_VERSION:
            raise FormatError(
                f"not a RAFS v5 bootstrap: magic 0x{self.magic:08x} version 0x{self.version:x}"
            )
        if self.sb_size != self.SIZE:
            raise FormatError(f"RAFS v5 superblock: sb_size {self.sb_size} != 8192")
        if not valid_chunk_size(self.block_size):
            raise FormatError(f"RAFS v5 superblock: invalid chunk size 0x{self.block_size:x}")
        if self.inode_table_entries == 0:
            raise FormatError("RAFS v5 superblock: empty inode table")
        end = self.inode_table_offset + U32.size * self.inode_table_entries
        if self.inode_table_offset < self.SIZE or self.inode_table_offset % 8 or end > file_size:
            raise FormatError(
                f"RAFS v5 superblock: inode table at {self.inode_table_offset} "
                f"with {self.inode_table_entries} entries does not fit the file"
            )
        if self.blob_table_size and self.blob_table_offset + self.blob_table_size > file_size:
            raise FormatError("RAFS v5 superblock: blob table beyond the end of the file")
        if (
            self.prefetch_table_entries
            and self.prefetch_table_offset + U32.size * self.prefetch_table_entries > file_size
        ):
            raise FormatError("RAFS v5 superblock: prefetch table beyond the end of the file")
        if (
            self.extended_blob_table_entries
            and self.extended_blob_table_offset
            + V5ExtBlobEntry.SIZE * self.extended_blob_table_entries
            > file_size
        ):
            raise FormatError("RAFS v5 superblock: extended blob table beyond the end of the file")


@dataclass(frozen=True, slots=True)
class V5BlobEntry:
    """Entry of the variable-length v5 blob table."""

    readahead_offset: int  # u32, bytes
    readahead_size: int  # u32, bytes
    blob_id: str  # ASCII, up to the next NUL


def unpack_v5_blob_table(buf: bytes | memoryview) -> list[V5BlobEntry]:
    """`u32 readahead_offset | u32 readahead_size | id` entries separated by one NUL."""
    out: list[V5BlobEntry] = []
    raw = bytes(buf)
    pos = 0
    while pos + 8 <= len(raw):
        ra_off, ra_size = struct.unpack_from("<II", raw, pos)
        pos += 8
        end = raw.find(b"\0", pos)
        if end < 0:
            end = len(raw)
        ident = raw[pos:end]
        if not ident:
            break  # zero padding at the end of the table
        try:
            blob_id = ident.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"RAFS v5 blob table: blob id {ident!r} is not ASCII") from None
        out.append(V5BlobEntry(ra_off, ra_size, blob_id))
        pos = end + 1
    return out


@dataclass(frozen=True, slots=True)
class V5ExtBlobEntry:
    """64-byte extended blob table entry."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQQ40s")
    SIZE: ClassVar[int] = STRUCT.size
    chunk_count: int  # u32, chunks in the blob
    features: BlobFeatures  # u32, BlobFeatures
    uncompressed_size: int  # u64, bytes
    compressed_size: int  # u64, bytes: the blob file's size

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int) -> V5ExtBlobEntry:
        cnt, feat, usize, csize, _ = cls.STRUCT.unpack_from(buf, off)
        return cls(cnt, BlobFeatures(feat), usize, csize)


@dataclass(frozen=True, slots=True)
class V5Inode:
    """128-byte v5 inode record header (name, symlink target, xattrs, chunks follow)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<32sQQIIIIQQQIIIHHIIQ8s")
    SIZE: ClassVar[int] = STRUCT.size
    digest: bytes  # 32 B, i_digest (file: of its chunk digests; dir: of its children's)
    parent: int  # u64, the parent's inode number (0 for the root)
    ino: int  # u64, inode number (root 1; hard links repeat the first entry's)
    uid: int  # u32
    gid: int  # u32
    projid: int  # u32, 0
    mode: int  # u32, POSIX mode with the type bits
    size: int  # u64, bytes (directories: a pseudo size)
    blocks: int  # u64, 512-byte blocks
    flags: V5InodeFlags  # u64, V5InodeFlags
    nlink: int  # u32
    child_index: int  # u32, dirs: inode-table index (1-based) of the first child
    child_count: int  # u32, dirs: children; regular files: chunk infos that follow
    name_size: int  # u16, bytes of the name (unpadded)
    symlink_size: int  # u16, bytes of the symlink target (unpadded)
    rdev: int  # u32, device number of chr/blk devices (EROFS 'new' encoding)
    mtime_nsec: int  # u32, nanoseconds
    mtime: int  # u64, seconds

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int) -> V5Inode:
        if off + cls.SIZE > len(buf):
            raise FormatError(f"RAFS v5 inode at {off} lies outside the bootstrap")
        (digest, parent, ino, uid, gid, projid, mode, size, blocks, flags, *rest) = (
            cls.STRUCT.unpack_from(buf, off)
        )
        return cls(
            digest,
            parent,
            ino,
            uid,
            gid,
            projid,
            mode,
            size,
            blocks,
            _inode_flags(flags),
            *rest[:8],
        )

    @property
    def has_xattrs(self) -> bool:
        """Whether an xattr table follows the name and symlink target (flags has XATTR)."""
        return bool(int(self.flags) & _XATTR)

    @property
    def name_offset(self) -> int:
        return self.SIZE

    @property
    def symlink_offset(self) -> int:
        return self.SIZE + align8(self.name_size)

    @property
    def xattr_offset(self) -> int:
        return self.symlink_offset + align8(self.symlink_size)


def unpack_v5_xattrs(buf: bytes | memoryview, off: int) -> tuple[dict[bytes, bytes], int]:
    """Parse a v5 xattr table at `off`; return (xattrs, bytes the table occupies)."""
    if off + 8 > len(buf):
        raise FormatError(f"RAFS v5 xattr table at {off} lies outside the bootstrap")
    size = struct.unpack_from("<Q", buf, off)[0]
    start = off + 8
    end = start + size
    if end > len(buf):
        raise FormatError(f"RAFS v5 xattr table at {off}: size {size} overruns the bootstrap")
    out: dict[bytes, bytes] = {}
    pos = start
    while pos + 4 <= end:
        pair = struct.unpack_from("<I", buf, pos)[0]
        pos += 4
        if pos + pair > end:
            raise FormatError(f"RAFS v5 xattr table at {off}: pair overruns the table")
        data = bytes(buf[pos : pos + pair])
        nul = data.find(b"\0")
        if nul <= 0:
            raise FormatError(f"RAFS v5 xattr table at {off}: pair without a name")
        out[data[:nul]] = data[nul + 1 :]
        pos += pair
    return out, 8 + align8(size)
