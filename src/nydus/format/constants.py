"""Numeric constants of the RAFS / Nydus formats (see shared/spec/rafs-format.md)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester

BLOCK_SIZE = 4096
BLOCK_BITS = 12
EROFS_SUPER_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2
RAFS_V5_MAGIC = 0x52414653
RAFS_V5_VERSION = 0x500
EXT_SUPER_OFFSET = 1152
DEVT_SLOTOFF = 11
DEVICE_TABLE_OFFSET = DEVT_SLOTOFF * 128  # 1408
FEATURE_COMPAT_RAFS_V6 = 0x4000_0000
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
FEATURE_INCOMPAT_DEVICE_TABLE = 0x8
FEATURE_INCOMPAT_RAFS_V6 = FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE
BLOB_META_MAGIC = 0xB10BB10B
BLOB_META_HEADER_SIZE = 4096
ROOT_NID = 128
DEFAULT_CHUNK_SIZE = 0x100000
MIN_CHUNK_SIZE = 0x1000
MAX_CHUNK_SIZE = 0x1000000
MAX_BLOBS = 255
MAX_NAME_LEN = 255
# the ranges an inode's fields must keep: what RAFS stores (u32 ids, u64 times and sizes)
# and the kernel can show (EROFS and FUSE take seconds and sizes as signed 64-bit)
MAX_ID = 0xFFFF_FFFF
MAX_MTIME = (1 << 63) - 1
MAX_NSEC = 999_999_999
MAX_FILE_SIZE = (1 << 63) - 1
MAX_DEV_MAJOR = 0xFFF  # the EROFS 32-bit device encoding: 12-bit major, 20-bit minor
MAX_DEV_MINOR = 0xF_FFFF
BLOB_ID_LEN = 64
PLACEHOLDER_BLOB_ID = "x" * 64
MAPPED_BLKADDR_ALIGN = 512 * 1024


class InodeLayout(IntEnum):
    """EROFS inode data layouts RAFS uses: bits 1..3 of `i_format` (rafs-format §4.7)."""

    FLAT_PLAIN = 0  # all data blocks contiguous at raw_blkaddr (i_u)
    FLAT_INLINE = 2  # full blocks at raw_blkaddr, the last partial block after the inode
    CHUNK_BASED = 4  # a chunk index array after the inode (every regular file)


CHUNK_FORMAT_INDEXES = 0x20
CHUNK_FORMAT_BLKBITS_MASK = 0x1F


class FileType(IntEnum):
    """EROFS directory-entry file types (the dirent's u8 `file_type`, rafs-format §4.9)."""

    UNKNOWN = 0
    REG = 1
    DIR = 2
    CHR = 3
    BLK = 4
    FIFO = 5
    SOCK = 6
    SYMLINK = 7


_FT_OF_FMT = {
    0o100000: FileType.REG,
    0o040000: FileType.DIR,
    0o020000: FileType.CHR,
    0o060000: FileType.BLK,
    0o010000: FileType.FIFO,
    0o140000: FileType.SOCK,
    0o120000: FileType.SYMLINK,
}


def file_type_of(mode: int) -> FileType:
    """The directory-entry file type of a POSIX mode."""
    return _FT_OF_FMT.get(mode & 0o170000, FileType.UNKNOWN)


class XattrIndex(IntEnum):
    """Inline xattr name indexes (the entry's u8 `name_index`, rafs-format §4.8)."""

    USER = 1
    POSIX_ACL_ACCESS = 2  # the whole name; the stored suffix is empty
    POSIX_ACL_DEFAULT = 3  # the whole name; the stored suffix is empty
    TRUSTED = 4
    SECURITY = 6


XATTR_PREFIXES: dict[int, bytes] = {
    XattrIndex.USER: b"user.",
    XattrIndex.POSIX_ACL_ACCESS: b"system.posix_acl_access",
    XattrIndex.POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    XattrIndex.TRUSTED: b"trusted.",
    XattrIndex.SECURITY: b"security.",
}


class SuperFlags(IntFlag):
    COMPRESSION_NONE = 0x1
    COMPRESSION_LZ4 = 0x2
    HASH_BLAKE3 = 0x4
    HASH_SHA256 = 0x8
    EXPLICIT_UID_GID = 0x10
    HAS_XATTR = 0x20
    COMPRESSION_GZIP = 0x40
    COMPRESSION_ZSTD = 0x80
    INLINED_CHUNK_DIGEST = 0x100
    TARFS_MODE = 0x200
    ENCRYPTION_NONE = 0x0100_0000
    ENCRYPTION_ASE_128_XTS = 0x0200_0000


SUPER_FLAGS_RESERVED_COMPAT = 0xFC00_0000  # 0x0400_0000..0x8000_0000: tolerated
SUPER_FLAGS_KNOWN = sum(SuperFlags) | SUPER_FLAGS_RESERVED_COMPAT

COMPRESSOR_FLAG = {
    Compressor.NONE: SuperFlags.COMPRESSION_NONE,
    Compressor.LZ4_BLOCK: SuperFlags.COMPRESSION_LZ4,
    Compressor.GZIP: SuperFlags.COMPRESSION_GZIP,
    Compressor.ZSTD: SuperFlags.COMPRESSION_ZSTD,
}
DIGESTER_FLAG = {Digester.BLAKE3: SuperFlags.HASH_BLAKE3, Digester.SHA256: SuperFlags.HASH_SHA256}
SUPER_COMPRESSION_FLAGS = (
    SuperFlags.COMPRESSION_NONE
    | SuperFlags.COMPRESSION_LZ4
    | SuperFlags.COMPRESSION_GZIP
    | SuperFlags.COMPRESSION_ZSTD
)
SUPER_HASH_FLAGS = SuperFlags.HASH_BLAKE3 | SuperFlags.HASH_SHA256


class BlobFeatures(IntFlag):
    ALIGNED = 0x1
    INLINED_FS_META = 0x2
    CHUNK_INFO_V2 = 0x4
    ZRAN = 0x8
    SEPARATE = 0x10
    INLINED_CHUNK_DIGEST = 0x20
    TARFS = 0x40
    BATCH = 0x80
    ENCRYPTED = 0x100
    IS_CHUNKDICT_GENERATED = 0x200
    IS_SEPARATED_WITH_PREFETCH_FILES = 0x400
    EXTERNAL = 0x800
    HAS_TAR_HEADER = 0x1000_0000
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000


BLOB_FEATURES_INTERNAL = 0x8000_0000  # an in-memory bit of upstream's: never on disk
BLOB_FEATURES_UNKNOWN_LOW = 0xF000  # unassigned bits of the low half: rejected


class ChunkFlags(IntFlag):
    COMPRESSED = 0x1
    HOLE = 0x2
    ENCRYPTED = 0x4
    BATCH = 0x8
    HAS_CRC32 = 0x10


def super_flags_names(flags: int) -> list[str]:
    """Upstream-style feature names for the log line `rafs superblock features: ...`."""
    names = []
    table = [
        (SuperFlags.COMPRESSION_NONE, "COMPRESSION_NONE"),
        (SuperFlags.COMPRESSION_LZ4, "COMPRESSION_LZ4"),
        (SuperFlags.COMPRESSION_GZIP, "COMPRESSION_GZIP"),
        (SuperFlags.COMPRESSION_ZSTD, "COMPRESSION_ZSTD"),
        (SuperFlags.HASH_BLAKE3, "HASH_BLAKE3"),
        (SuperFlags.HASH_SHA256, "HASH_SHA256"),
        (SuperFlags.EXPLICIT_UID_GID, "EXPLICIT_UID_GID"),
        (SuperFlags.HAS_XATTR, "HAS_XATTR"),
        (SuperFlags.INLINED_CHUNK_DIGEST, "INLINED_CHUNK_DIGEST"),
        (SuperFlags.TARFS_MODE, "TARFS_MODE"),
        (SuperFlags.ENCRYPTION_NONE, "ENCRYPTION_NONE"),
        (SuperFlags.ENCRYPTION_ASE_128_XTS, "ENCRYPTION_ASE_128_XTS"),
    ]
    for bit, name in table:
        if flags & bit:
            names.append(name)
    return names


def blob_features_names(features: int) -> list[str]:
    return [f.name for f in BlobFeatures if features & f and f.name]


def align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def valid_chunk_size(size: int) -> bool:
    return MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE and size & (size - 1) == 0
