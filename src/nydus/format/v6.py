"""RAFS v6 (EROFS) bootstrap records: superblocks, device slots, blob table, inodes,
dirents, inline xattrs, chunk indexes and the 80-byte chunk info table record."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from nydus.errors import FormatError
from nydus.format.blobmeta import ChunkMeta
from nydus.format.constants import (
    BLOB_FEATURES_INTERNAL,
    BLOB_FEATURES_UNKNOWN_LOW,
    BLOCK_SIZE,
    CHUNK_FORMAT_BLKBITS_MASK,
    CHUNK_FORMAT_INDEXES,
    DEVT_SLOTOFF,
    EROFS_MAGIC,
    FEATURE_COMPAT_RAFS_V6,
    FEATURE_INCOMPAT_RAFS_V6,
    MAX_NAME_LEN,
    XATTR_PREFIXES,
    BlobFeatures,
    ChunkFlags,
    InodeLayout,
    SuperFlags,
    XattrIndex,
    valid_chunk_size,
)
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester

_U16 = struct.Struct("<H")  # i_format at the start of an inode, nameoff in a dirent
_DIRENT_NAMEOFF = 8  # offset of nameoff in a dirent

# inline xattrs (rafs-format §4.8): a 12-byte ibody header, then 4-byte aligned entries
XATTR_IBODY_HEADER = struct.Struct("<IB7x")  # u32 reserved, u8 shared count, 7 B reserved
XATTR_ENTRY = struct.Struct("<BBH")  # u8 name length, u8 name index, u16 value size (bytes)
XATTR_ALIGN = 4  # bytes: entries are padded to it; i_xattr_icount counts its units
XATTR_SHARED_ENTRY = 4  # bytes: a u32 shared xattr id (RAFS writes none)


# i_format (u16): bit 0 the inode version (1: extended 64 B), bits 1..3 the data layout
I_FORMAT_EXTENDED = 0x1
I_FORMAT_LAYOUT_SHIFT = 1
I_FORMAT_LAYOUT_MASK = 0x7
I_FORMAT_KNOWN = 0xF
_LAYOUTS = {int(m): m for m in InodeLayout}
_CHUNK_FLAGS: dict[int, ChunkFlags] = {}


def _chunk_flags(value: int) -> ChunkFlags:
    """`ChunkFlags(value)`, memoised (chunk tables hold few distinct values)."""
    flags = _CHUNK_FLAGS.get(value)
    if flags is None:
        flags = _CHUNK_FLAGS[value] = ChunkFlags(value)
    return flags


def _id_bytes(blob_id: str) -> bytes:
    raw = blob_id.encode("ascii")
    if len(raw) > 64:
        raise FormatError(f"blob id {blob_id!r} longer than 64 bytes")
    return raw.ljust(64, b"\0")


def unpack_record(
    st: struct.Struct, buf: bytes | memoryview, off: int, what: str
) -> tuple[Any, ...]:
    """`st` unpacked at `off`, or a FormatError naming `what` when it does not fit in `buf`."""
    if off < 0 or off + st.size > len(buf):
        raise FormatError(
            f"{what} at offset {off} ({st.size} bytes) lies outside the {len(buf)}-byte bootstrap"
        )
    return st.unpack_from(buf, off)


def _id_str(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class SuperBlock:
    """EROFS superblock, 128 bytes at file offset 1024 (fields in constructor order; `pack`
    gives the on-disk order)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIBBHQQIIII16s16sIHHH38s")
    SIZE: ClassVar[int] = STRUCT.size
    root_nid: int  # u16, nid of the root directory (ours: 128)
    inos: int  # u64, inode numbers handed out (root + every entry); non-zero
    blocks: int  # u32, 4 KiB blocks of all blobs (sum of uncompressed_size / 4096); 0 without
    meta_blkaddr: int  # u32, block of the metadata area (the nid base)
    extra_devices: int  # u16, blobs = device slots = blob table entries
    blkszbits: int = 12  # u8, log2 of the block size: 12 (9 only in TARFS mode)
    magic: int = EROFS_MAGIC  # u32, EROFS_MAGIC
    checksum: int = 0  # u32, always 0 (nydusd rejects others)
    feature_compat: int = FEATURE_COMPAT_RAFS_V6  # u32, must include FEATURE_COMPAT_RAFS_V6
    extslots: int = 0  # u8, sb_extslots: always 0
    build_time: int = 0  # u64, seconds; 0
    build_time_nsec: int = 0  # u32, nanoseconds; 0
    xattr_blkaddr: int = 0  # u32, shared xattr block: always 0 (inline xattrs only)
    feature_incompat: int = (
        FEATURE_INCOMPAT_RAFS_V6  # u32, exactly this (chunked file | device table)
    )
    u1: int = 0  # u16, compression algorithms / lz4 distance: always 0
    devt_slotoff: int = DEVT_SLOTOFF  # u16, device table offset in 128-byte units: 11 (1408)

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.magic,
            self.checksum,
            self.feature_compat,
            self.blkszbits,
            self.extslots,
            self.root_nid,
            self.inos,
            self.build_time,
            self.build_time_nsec,
            self.blocks,
            self.meta_blkaddr,
            self.xattr_blkaddr,
            b"\0" * 16,
            b"\0" * 16,
            self.feature_incompat,
            self.u1,
            self.extra_devices,
            self.devt_slotoff,
            b"\0" * 38,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> SuperBlock:
        if len(buf) < cls.STRUCT.size:
            raise FormatError("not a RAFS v6 bootstrap: too short for an EROFS superblock")
        (
            magic,
            checksum,
            compat,
            blkszbits,
            extslots,
            root_nid,
            inos,
            btime,
            btime_ns,
            blocks,
            meta_blkaddr,
            xattr_blkaddr,
            _uuid,
            _vol,
            incompat,
            u1,
            extra,
            slotoff,
            _res,
        ) = cls.STRUCT.unpack_from(buf)
        if magic != EROFS_MAGIC:
            raise FormatError(f"not a RAFS v6 bootstrap: bad magic 0x{magic:08x} at 1024")
        sb = cls(
            root_nid=root_nid,
            inos=inos,
            blocks=blocks,
            meta_blkaddr=meta_blkaddr,
            extra_devices=extra,
            blkszbits=blkszbits,
            magic=magic,
            checksum=checksum,
            feature_compat=compat,
            extslots=extslots,
            build_time=btime,
            build_time_nsec=btime_ns,
            xattr_blkaddr=xattr_blkaddr,
            feature_incompat=incompat,
            u1=u1,
            devt_slotoff=slotoff,
        )
        sb.validate()
        return sb

    def validate(self) -> None:
        if self.checksum != 0:
            raise FormatError(f"RAFS v6 superblock: checksum must be 0, got 0x{self.checksum:x}")
        if not self.feature_compat & FEATURE_COMPAT_RAFS_V6:
            raise FormatError("not a RAFS v6 bootstrap: EROFS image without the RAFS_V6 compat bit")
        if self.blkszbits not in (9, 12):
            raise FormatError(f"RAFS v6 superblock: unsupported block size bits {self.blkszbits}")
        if self.extslots != 0:
            raise FormatError(f"RAFS v6 superblock: sb_extslots must be 0, got {self.extslots}")
        if self.feature_incompat != FEATURE_INCOMPAT_RAFS_V6:
            raise FormatError(
                f"RAFS v6 superblock: feature_incompat must be 0xc, got 0x{self.feature_incompat:x}"
            )
        if self.u1 != 0:
            raise FormatError("RAFS v6 superblock: compression field must be 0")
        if self.devt_slotoff != DEVT_SLOTOFF:
            raise FormatError(
                f"RAFS v6 superblock: devt_slotoff must be 11, got {self.devt_slotoff}"
            )
        if self.inos == 0:
            raise FormatError("RAFS v6 superblock: inode count is 0")


@dataclass(frozen=True, slots=True)
class ExtSuperBlock:
    """RAFS v6 extended superblock, 256 bytes at file offset 1152."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QQIIQQQII200s")
    SIZE: ClassVar[int] = STRUCT.size
    flags: SuperFlags  # u64, RafsSuperFlags
    blob_table_offset: int  # u64, bytes from the file start
    blob_table_size: int  # u32, bytes: BlobInfo.SIZE per blob
    chunk_size: int  # u32, bytes; every blob entry carries the same
    chunk_table_offset: int  # u64, bytes from the file start (4 KiB aligned); 0 without
    chunk_table_size: int  # u64, bytes: ChunkInfo.SIZE per record
    prefetch_table_offset: int = 0  # u64, bytes from the file start; 0 without
    prefetch_table_size: int = 0  # u32, bytes: 4 per u32 nid

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.flags,
            self.blob_table_offset,
            self.blob_table_size,
            self.chunk_size,
            self.chunk_table_offset,
            self.chunk_table_size,
            self.prefetch_table_offset,
            self.prefetch_table_size,
            0,
            b"\0" * 200,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> ExtSuperBlock:
        (flags, bt_off, bt_size, chunk_size, ct_off, ct_size, pt_off, pt_size, _pad, _res) = (
            unpack_record(cls.STRUCT, buf, 0, "RAFS v6 extended superblock")
        )
        return cls(SuperFlags(flags), bt_off, bt_size, chunk_size, ct_off, ct_size, pt_off, pt_size)


@dataclass(frozen=True, slots=True)
class DeviceSlot:
    """EROFS device table slot, 128 bytes (one per blob)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<64sII56s")
    SIZE: ClassVar[int] = STRUCT.size
    blob_id: str  # 64 B, ASCII blob id, NUL padded (the slot's tag)
    blocks: int  # u32, 4 KiB blocks of the blob's uncompressed view; non-zero
    mapped_blkaddr: int  # u32, block where the blob starts in a flattened single-device image

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            _id_bytes(self.blob_id), self.blocks, self.mapped_blkaddr, b"\0" * 56
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int = 0) -> DeviceSlot:
        tag, blocks, mapped, _ = unpack_record(cls.STRUCT, buf, off, "device table slot")
        return cls(_id_str(tag), blocks, mapped)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """RAFS v6 blob table entry, 256 bytes."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQ8sI36s")
    SIZE: ClassVar[int] = STRUCT.size
    blob_id: str  # 64 B, ASCII, the device slot's tag
    blob_index: int  # u32, the entry's position (0-based)
    chunk_size: int  # u32, bytes; the superblock's chunk size
    chunk_count: int  # u32, CI entries (< 2^24)
    compressor: int  # u32, Compressor id of the chunk data (validate() rejects unknown ids)
    digester: int  # u32, Digester id of the chunk digests (validate() rejects unknown ids)
    features: BlobFeatures  # u32, BlobFeatures
    compressed_size: int  # u64, bytes: the whole blob file for native blobs
    uncompressed_size: int  # u64, bytes: end of the last chunk, 4 KiB aligned
    blob_toc_size: int = 0  # u32, bytes of ToC entries + their 512-byte tar header; 0 without
    ci_compressor: int = 0  # u32, Compressor id of the CI array
    ci_offset: int = 0  # u64, bytes: the (compressed) CI array's offset in the blob
    ci_compressed_size: int = 0  # u64, bytes of the CI array as stored
    ci_uncompressed_size: int = 0  # u64, bytes: ChunkMeta.entry_size * chunk_count
    blob_toc_digest: bytes = (
        b"\0" * 32
    )  # 32 B, SHA-256 of the ToC entries + tar header; zeros without
    blob_meta_digest: bytes = (
        b"\0" * 32
    )  # 32 B, ZRAN/SEPARATE: SHA-256 of the meta blob; zeros otherwise
    blob_meta_size: int = 0  # u64, bytes of that meta blob; 0 otherwise
    cipher_iv: bytes = b"\0" * 8  # 8 B, encryption IV bytes 8..15; zeros
    cipher_algo: int = 0  # u32, 0 none, 1 AES-128-XTS

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            _id_bytes(self.blob_id),
            self.blob_index,
            self.chunk_size,
            self.chunk_count,
            self.compressor,
            self.digester,
            self.features,
            self.compressed_size,
            self.uncompressed_size,
            self.blob_toc_size,
            self.ci_compressor,
            self.ci_offset,
            self.ci_compressed_size,
            self.ci_uncompressed_size,
            self.blob_toc_digest,
            self.blob_meta_digest,
            self.blob_meta_size,
            self.cipher_iv,
            self.cipher_algo,
            b"\0" * 36,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int = 0) -> BlobInfo:
        (raw_id, index, chunk_size, count, comp, dig, features, *rest) = unpack_record(
            cls.STRUCT, buf, off, "blob table entry"
        )
        return cls(
            _id_str(raw_id), index, chunk_size, count, comp, dig, BlobFeatures(features), *rest[:12]
        )

    def validate(self, index: int, chunk_size: int) -> None:
        F = BlobFeatures
        where = f"blob table entry {index} ({self.blob_id})"
        if self.blob_index != index:
            raise FormatError(f"{where}: blob_index {self.blob_index} != position {index}")
        if self.chunk_size != chunk_size or not valid_chunk_size(self.chunk_size):
            raise FormatError(
                f"{where}: chunk size 0x{self.chunk_size:x} invalid or "
                f"different from the superblock's 0x{chunk_size:x}"
            )
        if not Compressor.known(self.compressor) or not Compressor.known(self.ci_compressor):
            raise FormatError(f"{where}: unknown compressor id {self.compressor}")
        if not Digester.known(self.digester):
            raise FormatError(f"{where}: unknown digester id {self.digester}")
        if self.features & BLOB_FEATURES_INTERNAL or self.features & BLOB_FEATURES_UNKNOWN_LOW:
            raise FormatError(f"{where}: invalid feature bits 0x{self.features:x}")
        if not self.features & F.TARFS and not self.features & F.ALIGNED:
            raise FormatError(f"{where}: ALIGNED feature missing")
        if self.ci_compressed_size > self.ci_uncompressed_size:
            raise FormatError(f"{where}: CI compressed size exceeds uncompressed size")
        entry = ChunkMeta.entry_size(bool(self.features & F.CHUNK_INFO_V2))
        special = self.features & (F.BATCH | F.ZRAN | F.ENCRYPTED)
        if (
            self.ci_uncompressed_size
            and not special
            and self.ci_uncompressed_size != entry * self.chunk_count
        ):
            raise FormatError(
                f"{where}: CI size {self.ci_uncompressed_size} != "
                f"{entry} * {self.chunk_count} chunks"
            )
        if special and not self.features & F.CHUNK_INFO_V2:
            raise FormatError(f"{where}: batch/zran/encrypted blobs need CHUNK_INFO_V2")


def new_encode_dev(major: int, minor: int) -> int:
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def rdev_to_erofs(rdev: int) -> int:
    """Linux dev_t (glibc encoding from os.stat) to the 32-bit EROFS 'new' encoding."""
    import os

    return new_encode_dev(os.major(rdev), os.minor(rdev)) & 0xFFFFFFFF


def erofs_to_rdev(value: int) -> int:
    import os

    major = (value & 0xFFF00) >> 8
    minor = (value & 0xFF) | ((value >> 12) & 0xFFF00)
    return os.makedev(major, minor)


@dataclass(frozen=True, slots=True)
class Inode:
    """An EROFS inode (extended 64 bytes or compact 32 bytes)."""

    EXT: ClassVar[struct.Struct] = struct.Struct("<HHHHQIIIIQII16s")
    COMPACT: ClassVar[struct.Struct] = struct.Struct("<HHHHIIIIHH4s")
    EXT_SIZE: ClassVar[int] = EXT.size
    COMPACT_SIZE: ClassVar[int] = COMPACT.size
    layout: InodeLayout  # bits 1..3 of the u16 i_format
    xattr_icount: int  # u16, inline xattr area size descriptor; 0: no xattrs
    mode: int  # u16, POSIX mode with the type bits
    size: int  # u64 (compact: u32), bytes: file size, dirent bytes, symlink target length
    i_u: int  # u32, FLAT_*: raw_blkaddr; CHUNK_BASED: chunk format; chr/blk: rdev
    ino: int  # u32, the writer's inode number (informational: readers use the nid)
    uid: int  # u32 (compact: u16)
    gid: int  # u32 (compact: u16)
    mtime: int  # u64, seconds (compact: none, 0)
    mtime_nsec: int  # u32, nanoseconds (compact: none, 0)
    nlink: int  # u32 (compact: u16)
    extended: bool = True  # bit 0 of i_format: 64-byte extended (True) or 32-byte compact inode

    @property
    def inode_size(self) -> int:
        return self.EXT_SIZE if self.extended else self.COMPACT_SIZE

    @property
    def xattr_size(self) -> int:
        return xattr_area_size(self.xattr_icount)

    def pack(self) -> bytes:
        if not self.extended:
            raise FormatError("only extended inodes are written")
        return self.EXT.pack(
            (self.layout << I_FORMAT_LAYOUT_SHIFT) | I_FORMAT_EXTENDED,
            self.xattr_icount,
            self.mode,
            0,
            self.size,
            self.i_u,
            self.ino,
            self.uid,
            self.gid,
            self.mtime,
            self.mtime_nsec,
            self.nlink,
            b"\0" * 16,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int) -> Inode:
        if off + cls.COMPACT_SIZE > len(buf):
            raise FormatError(f"inode at offset {off} lies outside the bootstrap")
        fmt = _U16.unpack_from(buf, off)[0]
        if fmt & ~I_FORMAT_KNOWN:
            raise FormatError(f"inode at offset {off}: invalid i_format 0x{fmt:x}")
        raw_layout = (fmt >> I_FORMAT_LAYOUT_SHIFT) & I_FORMAT_LAYOUT_MASK
        layout = _LAYOUTS.get(raw_layout)
        if layout is None:
            raise FormatError(f"inode at offset {off}: unsupported data layout {raw_layout}")
        if fmt & I_FORMAT_EXTENDED:
            if off + cls.EXT_SIZE > len(buf):
                raise FormatError(f"inode at offset {off} lies outside the bootstrap")
            (_f, xic, mode, _r, size, i_u, ino, uid, gid, mtime, mtime_ns, nlink, _res) = (
                cls.EXT.unpack_from(buf, off)
            )
            return cls(layout, xic, mode, size, i_u, ino, uid, gid, mtime, mtime_ns, nlink, True)
        (_f, xic, mode, nlink, size, _r, i_u, ino, uid, gid, _res) = cls.COMPACT.unpack_from(
            buf, off
        )
        return cls(layout, xic, mode, size, i_u, ino, uid, gid, 0, 0, nlink, False)


@dataclass(frozen=True, slots=True)
class Dirent:
    """EROFS directory entry (12 bytes + name stored in the block's name area)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QHBB")
    SIZE: ClassVar[int] = STRUCT.size
    nid: int  # u64, nid of the target inode
    file_type: int  # u8, a FileType (readers keep the stored value)
    name: bytes  # the name, stored in the block's name area (u16 nameoff in the record)


def pack_dir_blocks(entries: Iterable[Dirent]) -> tuple[list[bytes], int]:
    """Pack sorted dirents into 4 KiB blocks; return (blocks, i_size).

    Every block but the last is padded to 4096 bytes; the last keeps only its used bytes.
    """
    blocks: list[bytes] = []
    cur: list[Dirent] = []
    used = 0

    def flush(last: bool) -> None:
        nameoff = Dirent.SIZE * len(cur)
        heads = bytearray()
        names = bytearray()
        for d in cur:
            heads += Dirent.STRUCT.pack(d.nid, nameoff + len(names), d.file_type, 0)
            names += d.name
        data = bytes(heads + names)
        blocks.append(data if last else data.ljust(BLOCK_SIZE, b"\0"))

    for d in entries:
        need = Dirent.SIZE + len(d.name)
        if cur and used + need > BLOCK_SIZE:
            flush(False)
            cur, used = [], 0
        cur.append(d)
        used += need
    if cur:
        flush(True)
    size = BLOCK_SIZE * (len(blocks) - 1) + len(blocks[-1]) if blocks else 0
    return blocks, size


def unpack_dir_block(block: bytes | memoryview, used: int) -> list[Dirent]:
    """Decode one directory block whose meaningful bytes are block[:used]."""
    if used < Dirent.SIZE:
        raise FormatError("directory block too small")
    first_nameoff = _U16.unpack_from(block, _DIRENT_NAMEOFF)[0]
    if first_nameoff % Dirent.SIZE or first_nameoff == 0 or first_nameoff > used:
        raise FormatError(f"directory block: bad first name offset {first_nameoff}")
    n = first_nameoff // Dirent.SIZE
    heads = [Dirent.STRUCT.unpack_from(block, Dirent.SIZE * i) for i in range(n)]
    out = []
    for i, (nid, nameoff, ftype, _r) in enumerate(heads):
        end = heads[i + 1][1] if i + 1 < n else used
        if not first_nameoff <= nameoff <= end <= used:
            raise FormatError(f"directory block: bad name offset {nameoff}")
        name = bytes(block[nameoff:end])
        if i + 1 == n:
            nul = name.find(b"\0")
            if nul >= 0:
                name = name[:nul]
        if not name:
            raise FormatError("directory block: empty name")
        if b"/" in name or b"\0" in name or len(name) > MAX_NAME_LEN:
            shown = name[:64].decode("utf-8", "backslashreplace")
            raise FormatError(f"directory block: invalid name {shown!r} (a '/', a NUL or too long)")
        out.append(Dirent(nid, ftype, name))
    return out


def split_xattr_name(name: bytes) -> tuple[int, bytes]:
    """Map a full xattr name to (name_index, suffix)."""
    for index in (XattrIndex.POSIX_ACL_ACCESS, XattrIndex.POSIX_ACL_DEFAULT):
        if name == XATTR_PREFIXES[index]:
            return index, b""
    for index in (XattrIndex.USER, XattrIndex.TRUSTED, XattrIndex.SECURITY):
        prefix = XATTR_PREFIXES[index]
        if name.startswith(prefix) and len(name) > len(prefix):
            return index, name[len(prefix) :]
    raise FormatError(
        f"unsupported xattr name {name!r} (user., trusted., security., "
        "system.posix_acl_access/default only)"
    )


def pack_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    """Encode inline xattrs (ibody header + entries); empty bytes when there are none."""
    if not xattrs:
        return b""
    out = bytearray(XATTR_IBODY_HEADER.size)
    for name in sorted(xattrs):
        value = xattrs[name]
        index, suffix = split_xattr_name(name)
        if len(suffix) > 255 or len(value) > 65535:
            raise FormatError(f"xattr {name!r} too large")
        entry = XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        out += entry + b"\0" * (-len(entry) % XATTR_ALIGN)
    return bytes(out)


def xattr_icount(xattr_bytes: int) -> int:
    """`i_xattr_icount` of an inline xattr area of `xattr_bytes` (header included)."""
    if xattr_bytes == 0:
        return 0
    return (xattr_bytes - XATTR_IBODY_HEADER.size) // XATTR_ALIGN + 1


def xattr_area_size(icount: int) -> int:
    """Bytes of the inline xattr area an `i_xattr_icount` describes (0: none)."""
    return 0 if icount == 0 else XATTR_IBODY_HEADER.size + XATTR_ALIGN * (icount - 1)


def unpack_xattrs(buf: bytes | memoryview, off: int, size: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    if size == 0:
        return out
    if size < XATTR_IBODY_HEADER.size:
        raise FormatError("xattr area too small")
    end = off + size
    if end > len(buf):
        raise FormatError(f"xattr area at {off} ({size} bytes) lies outside the bootstrap")
    _reserved, shared = XATTR_IBODY_HEADER.unpack_from(buf, off)
    pos = off + XATTR_IBODY_HEADER.size + XATTR_SHARED_ENTRY * shared
    if pos > end:
        raise FormatError(f"xattr area at {off}: {shared} shared xattr ids overrun it")
    while pos + XATTR_ENTRY.size <= end:
        name_len, index, vsize = XATTR_ENTRY.unpack_from(buf, pos)
        if index not in XATTR_PREFIXES:
            raise FormatError(f"xattr with unknown name index {index}")
        start = pos + XATTR_ENTRY.size
        if start + name_len + vsize > end:
            raise FormatError("xattr entry overruns its inode's xattr area")
        name = XATTR_PREFIXES[index] + bytes(buf[start : start + name_len])
        out[name] = bytes(buf[start + name_len : start + name_len + vsize])
        pos = start + name_len + vsize
        pos += -(pos - off) % XATTR_ALIGN
    return out


@dataclass(frozen=True, slots=True)
class ChunkAddr:
    """Entry of a chunk-based inode's chunk index, 8 bytes on disk."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHI")
    SIZE: ClassVar[int] = STRUCT.size
    blob_index: int  # low byte of u16 dev, minus 1 (dev = EROFS device id = blob index + 1)
    ci_index: int  # u16 ci_lo + high byte of dev: 24-bit index in the blob's CI array
    blkaddr: int  # u32, 4 KiB block of the chunk in the blob's uncompressed view

    def pack(self) -> bytes:
        dev = ((self.blob_index + 1) & 0xFF) | (((self.ci_index >> 16) & 0xFF) << 8)
        return self.STRUCT.pack(self.ci_index & 0xFFFF, dev, self.blkaddr)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int) -> ChunkAddr:
        lo, dev, blkaddr = cls.STRUCT.unpack_from(buf, off)
        if dev & 0xFF == 0:
            raise FormatError(f"chunk index at {off}: device id 0 is invalid")
        return cls((dev & 0xFF) - 1, lo | ((dev >> 8) << 16), blkaddr)


def chunk_format(chunk_size: int) -> int:
    return CHUNK_FORMAT_INDEXES | ((chunk_size.bit_length() - 1 - 12) & CHUNK_FORMAT_BLKBITS_MASK)


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """80-byte chunk record: v6 chunk table entry and v5 chunk info."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<32sIIIIQQQII")
    SIZE: ClassVar[int] = STRUCT.size
    digest: bytes  # 32 B, digest of the uncompressed chunk
    blob_index: int  # u32, the chunk's blob
    flags: ChunkFlags  # u32, ChunkFlags
    compressed_size: int  # u32, bytes as stored in the blob
    uncompressed_size: int  # u32, bytes
    compressed_offset: int  # u64, bytes from the blob start
    uncompressed_offset: int  # u64, bytes in the blob's uncompressed view
    file_offset: int  # u64, bytes: offset in (some) file that uses the chunk
    index: int  # u32, the chunk's index in its blob's CI array
    crc32: int = 0  # u32, CRC32C of the uncompressed chunk when flags has HAS_CRC32; else 0

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.digest,
            self.blob_index,
            self.flags,
            self.compressed_size,
            self.uncompressed_size,
            self.compressed_offset,
            self.uncompressed_offset,
            self.file_offset,
            self.index,
            self.crc32,
        )

    @property
    def compressed(self) -> bool:
        """Whether the chunk is stored compressed (flags has COMPRESSED)."""
        return bool(int(self.flags) & CHUNK_COMPRESSED)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int = 0) -> ChunkInfo:
        (digest, blob, flags, csize, usize, coff, uoff, foff, index, crc) = unpack_record(
            cls.STRUCT, buf, off, "chunk info record"
        )
        return cls(digest, blob, _chunk_flags(flags), csize, usize, coff, uoff, foff, index, crc)


# A chunk table record as the raw tuple `ChunkInfo.STRUCT` unpacks (the reader's chunk map
# keeps these, built by `iter_unpack` in C): the positions of its fields.
(
    RAW_DIGEST,
    RAW_BLOB_INDEX,
    RAW_FLAGS,
    RAW_COMPRESSED_SIZE,
    RAW_UNCOMPRESSED_SIZE,
    RAW_COMPRESSED_OFFSET,
    RAW_UNCOMPRESSED_OFFSET,
    RAW_FILE_OFFSET,
    RAW_INDEX,
    RAW_CRC32,
) = range(10)
CHUNK_COMPRESSED = int(ChunkFlags.COMPRESSED)  # an int copy: IntFlag operators cost ~20x
