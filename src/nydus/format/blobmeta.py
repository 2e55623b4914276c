"""Native blob trailer records: chunk-info (CI) array entries v1/v2, the 4 KiB CI header,
ToC entries and the 512-byte GNU tar headers that follow each blob section."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import ClassVar

from nydus.errors import FormatError
from nydus.format.constants import BLOB_META_HEADER_SIZE, BLOB_META_MAGIC, BlobFeatures
from nydus.utils.compress import Compressor

TAR_BLOCK = 512
TOC_NAME = "rafs.blob.toc"
_U32 = struct.Struct("<I")


class TocFlags(IntFlag):
    """A ToC entry's u32 `flags`: how its data is stored (rafs-format §6.8)."""

    NONE = 0x1
    ZSTD = 0x2
    LZ4_BLOCK = 0x4


TOC_FLAG_OF_COMPRESSOR = {
    Compressor.NONE: TocFlags.NONE,
    Compressor.LZ4_BLOCK: TocFlags.LZ4_BLOCK,
    Compressor.ZSTD: TocFlags.ZSTD,
}
COMPRESSOR_OF_TOC_FLAG = {v: k for k, v in TOC_FLAG_OF_COMPRESSOR.items()}


class CiFlags(IntFlag):
    """Flags of a v2 CI entry, bits 56..63 of `uncomp_info` (rafs-format §6.5); not the
    chunk table's `ChunkFlags`, whose bits differ."""

    COMPRESSED = 0x01
    ZRAN = 0x02
    BATCH = 0x04
    ENCRYPTED = 0x08
    HAS_CRC32 = 0x10


CI_FLAGS_KNOWN = 0x1F
# int copies of the bits tested per CI entry: IntFlag operators cost ~20x an int's
_CI_COMPRESSED = int(CiFlags.COMPRESSED)
_CI_HAS_CRC32 = int(CiFlags.HAS_CRC32)
_CI_UNSUPPORTED = int(CiFlags.ZRAN | CiFlags.BATCH | CiFlags.ENCRYPTED)


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """One CI entry: where a chunk lives in the compressed and uncompressed views."""

    uncompressed_offset: int  # bytes in the uncompressed view, 4 KiB aligned (< 2^44)
    uncompressed_size: int  # bytes (stored minus one: 24 bits)
    compressed_offset: int  # bytes from the blob start (40 bits)
    compressed_size: int  # bytes (v1: 24 bits minus one; v2: 24 bits)
    compressed: bool  # v1: sizes differ; v2: CiFlags.COMPRESSED
    crc32: int = 0  # v2 only: u32 CRC32C of the uncompressed chunk (with has_crc32)
    has_crc32: bool = False  # v2 only: CiFlags.HAS_CRC32

    V1: ClassVar[struct.Struct] = struct.Struct("<QQ")
    V2: ClassVar[struct.Struct] = struct.Struct("<QQQ")
    V1_SIZE: ClassVar[int] = V1.size
    V2_SIZE: ClassVar[int] = V2.size

    @classmethod
    def entry_size(cls, v2: bool) -> int:
        """Bytes of one CI entry in the v2 or the v1 format."""
        return cls.V2_SIZE if v2 else cls.V1_SIZE

    def pack_v1(self) -> bytes:
        if self.uncompressed_offset % 4096:
            raise FormatError("CI v1: uncompressed offset not 4 KiB aligned")
        us, cs = self.uncompressed_size - 1, self.compressed_size - 1
        if not (0 <= us < 1 << 24 and 0 <= cs < 1 << 24):
            raise FormatError("CI v1: chunk size out of range")
        uncomp = ((us >> 20) & 0xF) << 8 | self.uncompressed_offset | (us & 0xFFFFF) << 44
        comp = self.compressed_offset | ((cs >> 20) & 0xF) << 40 | (cs & 0xFFFFF) << 44
        return self.V1.pack(uncomp, comp)

    @classmethod
    def unpack_v1(cls, buf: bytes | memoryview, off: int) -> ChunkMeta:
        uncomp, comp = cls.V1.unpack_from(buf, off)
        usize = (((uncomp >> 8) & 0xF) << 20 | (uncomp >> 44)) + 1
        uoff = uncomp & 0x0000_0FFF_FFFF_F000
        coff = comp & 0xFF_FFFF_FFFF
        csize = (((comp >> 40) & 0xF) << 20 | (comp >> 44)) + 1
        return cls(uoff, usize, coff, csize, csize != usize)

    def pack_v2(self) -> bytes:
        flags = (_CI_COMPRESSED if self.compressed else 0) | (
            _CI_HAS_CRC32 if self.has_crc32 else 0
        )
        uncomp = (self.uncompressed_offset >> 12) | (self.uncompressed_size - 1) << 32 | flags << 56
        comp = self.compressed_offset | self.compressed_size << 40
        return self.V2.pack(uncomp, comp, self.crc32 if self.has_crc32 else 0)

    @classmethod
    def unpack_v2(cls, buf: bytes | memoryview, off: int) -> ChunkMeta:
        uncomp, comp, data = cls.V2.unpack_from(buf, off)
        flags = uncomp >> 56
        if flags & ~CI_FLAGS_KNOWN:
            raise FormatError(f"CI v2 entry at {off}: invalid flags 0x{flags:x}")
        if flags & _CI_UNSUPPORTED:
            raise FormatError(
                f"CI v2 entry at {off}: zran/batch/encrypted chunks are not supported"
            )
        usize = ((uncomp >> 32) & 0xFF_FFFF) + 1
        csize = comp >> 40
        has_crc = bool(flags & _CI_HAS_CRC32)
        return cls(
            (uncomp & 0xFFFF_FFFF) << 12,
            usize,
            comp & 0xFF_FFFF_FFFF,
            csize,
            bool(flags & _CI_COMPRESSED),
            data & 0xFFFF_FFFF if has_crc else 0,
            has_crc,
        )


def unpack_ci_array(buf: bytes | memoryview, count: int, v2: bool) -> list[ChunkMeta]:
    size = ChunkMeta.entry_size(v2)
    if len(buf) < size * count:
        raise FormatError(f"CI array of {len(buf)} bytes too short for {count} chunks")
    fn = ChunkMeta.unpack_v2 if v2 else ChunkMeta.unpack_v1
    out = [fn(buf, i * size) for i in range(count)]
    expect = 0
    for i, c in enumerate(out):
        if c.uncompressed_offset != expect:
            raise FormatError(
                f"CI entry {i}: uncompressed offset {c.uncompressed_offset} "
                f"breaks the dense layout (expected {expect})"
            )
        if not c.compressed and c.compressed_size != c.uncompressed_size:
            raise FormatError(f"CI entry {i}: raw chunk with different sizes")
        expect = c.uncompressed_offset + (c.uncompressed_size + 4095) // 4096 * 4096
    return out


@dataclass(frozen=True, slots=True)
class BlobMetaHeader:
    """The 4096-byte CI header that directly follows the CI array."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIIQQQQQI")
    SIZE: ClassVar[int] = BLOB_META_HEADER_SIZE  # bytes on disk: STRUCT, zeros, magic2
    MAGIC2_OFFSET: ClassVar[int] = BLOB_META_HEADER_SIZE - 4
    features: BlobFeatures  # u32, BlobFeatures (the blob table entry's)
    ci_compressor: int  # u32, Compressor id of the CI array (0: stored raw)
    ci_entries: int  # u32, CI entries (the blob's chunk count)
    ci_offset: int  # u64, bytes: the CI array's offset in the blob
    ci_compressed_size: int  # u64, bytes of the CI array as stored
    ci_uncompressed_size: int  # u64, bytes
    zran_offset: int = 0  # u64, bytes into the uncompressed CI buffer of the ZRAN/batch table; 0
    zran_size: int = 0  # u64, bytes of the ZRAN/batch context tables; 0
    zran_count: int = 0  # u32, ZRAN/batch context entries; 0

    def pack(self) -> bytes:
        head = self.STRUCT.pack(
            BLOB_META_MAGIC,
            self.features,
            self.ci_compressor,
            self.ci_entries,
            self.ci_offset,
            self.ci_compressed_size,
            self.ci_uncompressed_size,
            self.zran_offset,
            self.zran_size,
            self.zran_count,
        )
        out = bytearray(self.SIZE)
        out[: len(head)] = head
        _U32.pack_into(out, self.MAGIC2_OFFSET, BLOB_META_MAGIC)
        return bytes(out)

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> BlobMetaHeader:
        if len(buf) < cls.SIZE:
            raise FormatError("blob meta header truncated")
        v = cls.STRUCT.unpack_from(buf)
        magic2 = _U32.unpack_from(buf, cls.MAGIC2_OFFSET)[0]
        magic, features, *rest = v
        if magic != BLOB_META_MAGIC or magic2 != BLOB_META_MAGIC:
            raise FormatError("blob meta header: bad magic")
        return cls(BlobFeatures(features), *rest)


@dataclass(frozen=True, slots=True)
class TocEntry:
    """128-byte ToC entry describing one blob section."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II16s32sQQQ48s")
    SIZE: ClassVar[int] = STRUCT.size
    flags: TocFlags  # u32, TocFlags: how the entry's data is stored
    name: str  # 16 B, ASCII, NUL padded
    digest: bytes  # 32 B, SHA-256 of the uncompressed entry data
    compressed_offset: int  # u64, bytes from the blob start
    compressed_size: int  # u64, bytes as stored
    uncompressed_size: int  # u64, bytes

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.flags,
            0,
            self.name.encode().ljust(16, b"\0"),
            self.digest,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            b"\0" * 48,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int = 0) -> TocEntry:
        flags, _r, name, digest, coff, csize, usize, _res = cls.STRUCT.unpack_from(buf, off)
        name_str = name.rstrip(b"\0").decode("ascii", "replace")
        return cls(TocFlags(flags), name_str, digest, coff, csize, usize)


def tar_header(name: str, size: int) -> bytes:
    """The GNU-format 512-byte reverse tar header that follows a blob section."""
    h = bytearray(TAR_BLOCK)
    raw = name.encode()
    h[0 : len(raw)] = raw
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = b"0"
    h[257:263] = b"ustar "
    h[263:265] = b" \0"
    h[148:156] = b" " * 8
    h[148:156] = b"%07o\0" % sum(h)
    return bytes(h)


def parse_tar_header(h: bytes | memoryview) -> tuple[str, int]:
    """Parse a reverse tar header; return (name, size). GNU magic required."""
    if len(h) != TAR_BLOCK:
        raise FormatError("tar header truncated")
    if bytes(h[257:263]) != b"ustar " or bytes(h[263:265]) != b" \0":
        raise FormatError("blob section header is not a GNU tar header")
    if h[156] not in (0x30, 0):
        raise FormatError("blob section header is not a regular file")
    name = bytes(h[0:100]).split(b"\0", 1)[0].decode("ascii", "replace")
    try:
        size = int(bytes(h[124:136]).split(b"\0", 1)[0].strip() or b"0", 8)
        chk = int(bytes(h[148:156]).split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise FormatError(f"tar header {name!r}: bad octal field") from None
    calc = sum(h[:148]) + 8 * 32 + sum(h[156:])
    if chk != calc:
        raise FormatError(f"tar header {name!r}: checksum mismatch")
    return name, size


def parse_toc(buf: bytes | memoryview) -> list[TocEntry]:
    """Parse ToC entries + trailing `rafs.blob.toc` header (buf ends at the blob's end)."""
    if len(buf) < TAR_BLOCK:
        raise FormatError("blob too small for a ToC")
    name, size = parse_tar_header(buf[len(buf) - TAR_BLOCK :])
    if name != TOC_NAME:
        raise FormatError(f"blob has no ToC (last tar header is {name!r})")
    if size % TocEntry.SIZE or size > len(buf) - TAR_BLOCK:
        raise FormatError(f"ToC size {size} invalid")
    start = len(buf) - TAR_BLOCK - size
    return [TocEntry.unpack(buf, start + i) for i in range(0, size, TocEntry.SIZE)]
