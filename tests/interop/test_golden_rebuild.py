"""Interop: rebuilding the upstream golden v6 image's two files with our builder gives a
bootstrap byte-identical to upstream's, except the fields the format spec documents as
builder-version drift or data-dependent (§0 item 11, §13.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nydus.format.rafs import open_bootstrap
from nydus.utils.compress import Compressor
from tests.golden import V6_BLOB_ID, golden_path

pytestmark = pytest.mark.golden


def _extract(boot: bytes, blob: bytes, dest: Path) -> None:
    sb = open_bootstrap(boot)
    for ent in sb.readdir(sb.root_ino):
        a = sb.attr(ent.ino)
        parts = []
        for c in sb.chunks(ent.ino):
            off, size, usize = c.compressed_offset, c.compressed_size, c.uncompressed_size
            assert off is not None and size is not None and usize is not None  # a chunk table
            parts.append(Compressor.ZSTD.decompress(blob[off : off + size], usize))
        data = b"".join(parts)
        p = dest / ent.name.decode()
        p.write_bytes(data)
        p.chmod(a.mode & 0o7777)
        os.utime(p, ns=(a.mtime * 10**9 + a.mtime_nsec,) * 2)
    dest.chmod(0o755)


def _diff_offsets(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i for i in range(len(a)) if a[i] != b[i]]


def test_rebuild_matches_upstream_layout(tmp_path: Path) -> None:
    gboot = golden_path("upstream", "v6", "bootstrap").read_bytes()
    gblob = golden_path("upstream", "v6", "blobs", V6_BLOB_ID).read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    _extract(gboot, gblob, src)
    out = tmp_path / "boot"
    blob = tmp_path / "blob"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nydus.cli.image",
            "create",
            str(src),
            "--bootstrap",
            str(out),
            "--blob",
            str(blob),
            "--features",
            "blob-toc",
            "-l",
            "warn",
        ],
        check=True,
    )
    ours = out.read_bytes()
    assert len(ours) == len(gboot) == 20480
    diffs = _diff_offsets(ours, gboot)
    allowed = set()
    allowed |= {1024 + 128 + 3}  # ENCRYPTION_NONE flag (newer builders set it)
    allowed |= set(range(1408, 1408 + 64))  # device slot tag = blob id (zstd output differs)
    allowed |= {1408 + 68, 1408 + 69}  # mapped_blkaddr: 512 KiB vs 2 MiB alignment
    allowed |= set(range(4096, 4096 + 64))  # blob table id
    allowed |= set(range(4096 + 88, 4096 + 96))  # compressed_size (file size)
    allowed |= set(range(4096 + 112, 4096 + 120))  # ci_offset (chunk data size differs)
    allowed |= set(range(4096 + 136, 4096 + 168))  # ToC digest
    allowed |= {12288 + 16}  # root raw_blkaddr: meaningless for inline dirs
    allowed |= {12288 + 20}  # root i_ino: 2.2-era builders wrote 0
    for rec in (16384, 16464):  # chunk table: compressed offset/size
        allowed |= set(range(rec + 40, rec + 44)) | set(range(rec + 48, rec + 56))
    unexpected = [d for d in diffs if d not in allowed]
    assert unexpected == [], f"bytes differ at {unexpected[:20]}"
    # same chunk digests and tree as upstream
    a, b = open_bootstrap(ours), open_bootstrap(gboot)
    assert [c.digest for c in a.chunk_table()] == [c.digest for c in b.chunk_table()]
    assert a.readdir(a.root_ino) == b.readdir(b.root_ino)
    # blob: the same section sequence as upstream (chunk data differs only by zstd version)
    data = blob.read_bytes()
    from nydus.format.blobmeta import parse_toc

    assert [e.name for e in parse_toc(data[-1024:])] == [
        "image.blob",
        "blob.meta",
        "blob.meta.header",
        "blob.digest",
    ]
