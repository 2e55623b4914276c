"""Compressors by name and id: none, lz4_block, gzip (read only), zstd.

The codec libraries are imported on first use: a daemon mounts before it decompresses
anything, and most images use one codec only.
"""

from __future__ import annotations

import threading
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from nydus.errors import FormatError

if TYPE_CHECKING:
    import zstandard

ZSTD_LEVEL = 3
_local = threading.local()


class Compressor(IntEnum):
    NONE = 0
    LZ4_BLOCK = 1
    GZIP = 2
    ZSTD = 3

    @classmethod
    def from_name(cls, name: str) -> Compressor:
        try:
            return {
                "none": cls.NONE,
                "lz4_block": cls.LZ4_BLOCK,
                "gzip": cls.GZIP,
                "zstd": cls.ZSTD,
            }[name.lower()]
        except KeyError:
            raise FormatError(
                f"unknown compressor {name!r} (expected none, lz4_block or zstd)"
            ) from None

    @classmethod
    def known(cls, value: int) -> bool:
        """Whether `value` is the on-disk id of one of these."""
        return value in cls._value2member_map_

    @property
    def label(self) -> str:
        return self.name.lower()

    def compress(self, data: bytes | memoryview) -> bytes:
        """Compress `data`; the caller keeps the raw bytes when this is not smaller."""
        if self is Compressor.NONE:
            return bytes(data)
        if self is Compressor.LZ4_BLOCK:
            return bytes(_lz4().compress(data, store_size=False))
        if self is Compressor.ZSTD:
            return _zstd_compressor().compress(data)
        if self is Compressor.GZIP:
            import gzip

            return gzip.compress(bytes(data), mtime=0)
        raise FormatError(f"compressor {self.label} cannot compress")

    def decompress(self, data: bytes | memoryview, size: int) -> bytes:
        """Decompress to exactly `size` bytes, or raise FormatError."""
        try:
            if self is Compressor.NONE:
                out = bytes(data)
            elif self is Compressor.LZ4_BLOCK:
                out = _lz4().decompress(data, uncompressed_size=size)
            elif self is Compressor.ZSTD:
                out = _zstd_decompressor().decompress(data, max_output_size=size)
            else:
                import gzip

                out = gzip.decompress(bytes(data))
        except _codec_errors() as exc:
            raise FormatError(f"{self.label} decompression failed: {exc}") from exc
        if len(out) != size:
            raise FormatError(f"{self.label} decompression gave {len(out)} bytes, expected {size}")
        return out


def _lz4() -> Any:
    import lz4.block

    return lz4.block


def _codec_errors() -> tuple[type[BaseException], ...]:
    """The codecs' error types (of those already imported: a codec never used cannot fail)."""
    import sys

    errors: list[type[BaseException]] = [OSError, EOFError]
    if "lz4.block" in sys.modules:
        errors.append(sys.modules["lz4.block"].LZ4BlockError)
    if "zstandard" in sys.modules:
        errors.append(sys.modules["zstandard"].ZstdError)
    return tuple(errors)


def _zstd_compressor() -> zstandard.ZstdCompressor:
    comp = getattr(_local, "zc", None)
    if comp is None:
        import zstandard

        comp = _local.zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return comp


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "zd", None)
    if dec is None:
        import zstandard

        dec = _local.zd = zstandard.ZstdDecompressor()
    return dec


def compress_if_smaller(comp: Compressor, data: bytes | memoryview) -> tuple[bytes, bool]:
    """Return (stored bytes, compressed?) keeping raw bytes unless strictly smaller."""
    if comp is Compressor.NONE:
        return bytes(data), False
    out = comp.compress(data)
    if len(out) < len(data):
        return out, True
    return bytes(data), False
