"""Numeric constants of the RAFS / Nydus formats (see shared/spec/rafs-format.md)."""

from __future__ import annotations

from enum import IntFlag

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

# EROFS inode data layouts
LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
LAYOUT_CHUNK_BASED = 4

CHUNK_FORMAT_INDEXES = 0x20
CHUNK_FORMAT_BLKBITS_MASK = 0x1F

# directory entry file types
FT_UNKNOWN, FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)
_FT_OF_FMT = {
    0o100000: FT_REG,
    0o040000: FT_DIR,
    0o020000: FT_CHR,
    0o060000: FT_BLK,
    0o010000: FT_FIFO,
    0o140000: FT_SOCK,
    0o120000: FT_SYMLINK,
}


def file_type_of(mode: int) -> int:
    """The directory-entry file type (FT_*) of a POSIX mode."""
    return _FT_OF_FMT.get(mode & 0o170000, FT_UNKNOWN)


# xattr name index -> prefix
XATTR_PREFIXES: dict[int, bytes] = {
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    6: b"security.",
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


SUPER_FLAGS_KNOWN = 0x3FF | 0x0100_0000 | 0x0200_0000 | 0xFC00_0000

# compressor id -> super flag, digester id -> super flag
COMPRESSOR_FLAG = {
    0: SuperFlags.COMPRESSION_NONE,
    1: SuperFlags.COMPRESSION_LZ4,
    2: SuperFlags.COMPRESSION_GZIP,
    3: SuperFlags.COMPRESSION_ZSTD,
}
DIGESTER_FLAG = {0: SuperFlags.HASH_BLAKE3, 1: SuperFlags.HASH_SHA256}


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
