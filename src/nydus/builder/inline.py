"""Read back the bootstrap that `--blob-inline-meta` embedded in a blob."""

from __future__ import annotations

import hashlib
import os

from nydus.errors import BuildError, FormatError
from nydus.format.blobmeta import COMPRESSOR_OF_TOC_FLAG, TAR_BLOCK, parse_tar_header, parse_toc
from nydus.utils.compress import Compressor


def extract_inline_bootstrap(blob_path: str) -> bytes:
    """The `image.boot` section of a blob (ToC first, else the reverse tar headers)."""
    try:
        with open(blob_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            tail_len = min(size, 1 << 20)
            f.seek(size - tail_len)
            tail = f.read(tail_len)
            try:
                entries = parse_toc(
                    tail[-min(len(tail), 4096) // 128 * 128 :] if len(tail) >= 4096 else tail
                )
            except FormatError:
                entries = []
            for e in entries:
                if e.name == "image.boot":
                    f.seek(e.compressed_offset)
                    stored = f.read(e.compressed_size)
                    comp = Compressor(COMPRESSOR_OF_TOC_FLAG.get(e.flags, 0))
                    boot = comp.decompress(stored, e.uncompressed_size)
                    if hashlib.sha256(boot).digest() != e.digest:
                        raise FormatError("image.boot digest mismatch")
                    return boot
            # no ToC: walk reverse tar headers from the end
            end = size
            while end >= TAR_BLOCK:
                f.seek(end - TAR_BLOCK)
                name, length = parse_tar_header(f.read(TAR_BLOCK))
                start = end - TAR_BLOCK - length
                if start < 0:
                    break
                if name == "image.boot":
                    f.seek(start)
                    return f.read(length)
                end = start
    except OSError as exc:
        raise BuildError(f"blob {blob_path}: {exc.strerror}") from exc
    except FormatError as exc:
        raise BuildError(f"blob {blob_path}: {exc}") from exc
    raise BuildError(f"blob {blob_path} has no inline bootstrap (image.boot)")


def blob_meta_cache(blob_path: str) -> bytes | None:
    """nydusd's `<blob id>.blob.meta` cache file for a blob-toc blob: the uncompressed CI
    array padded to 4 KiB, then the 4096-byte CI header; None for a blob without chunks."""
    try:
        with open(blob_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            tail_len = min(size, 4096) // 128 * 128 if size >= 4096 else size
            f.seek(size - tail_len)
            try:
                entries = {e.name: e for e in parse_toc(f.read(tail_len))}
            except FormatError:
                return None
            meta, header = entries.get("blob.meta"), entries.get("blob.meta.header")
            if meta is None or header is None:
                return None
            f.seek(meta.compressed_offset)
            comp = Compressor(COMPRESSOR_OF_TOC_FLAG.get(meta.flags, 0))
            ci = comp.decompress(f.read(meta.compressed_size), meta.uncompressed_size)
            f.seek(header.compressed_offset)
            head = f.read(header.compressed_size)
    except OSError as exc:
        raise BuildError(f"blob {blob_path}: {exc.strerror}") from exc
    except FormatError as exc:
        raise BuildError(f"blob {blob_path}: {exc}") from exc
    if len(head) != 4096:
        raise BuildError(f"blob {blob_path}: truncated blob meta header")
    return ci + b"\0" * (-len(ci) % 4096) + head
