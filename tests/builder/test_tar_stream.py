"""The fast tar reader against tar streams Python's `tarfile` writes (ustar, GNU, PAX with
global headers, base-256 ids, long names and links), compressed ones, and bad input; and
the gzip stream decoder (multi-member, zero padding, truncation)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile

import pytest
import zstandard

from nydus.builder.tar_stream import TarError, open_tar_stream
from nydus.utils.inflate import GzipError, gunzip_pieces


def _tar(fmt: int, members: list[tuple[tarfile.TarInfo, bytes | None]], **kw) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    r = random.Random(1)
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    d = tarfile.TarInfo("dir")
    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o750, 1_600_000_000
    out.append((d, None))
    for i, size in enumerate((0, 1, 511, 512, 513, 3 << 20)):
        ti = tarfile.TarInfo(f"dir/f{i}")
        ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = size, 0o644, 1000 + i, 2000, 1_600_000_001
        out.append((ti, r.randbytes(size)))
    long = tarfile.TarInfo("dir/" + "n" * 180)
    long.size = 5
    out.append((long, b"hello"))
    big = tarfile.TarInfo("dir/bigid")
    big.uid, big.gid, big.size = 3_000_000, 4_000_000, 2
    out.append((big, b"hi"))
    ln = tarfile.TarInfo("dir/link")
    ln.type, ln.linkname = tarfile.SYMTYPE, "t" * 150
    out.append((ln, None))
    hl = tarfile.TarInfo("dir/hard")
    hl.type, hl.linkname = tarfile.LNKTYPE, "dir/f1"
    out.append((hl, None))
    dev = tarfile.TarInfo("dir/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    out.append((dev, None))
    return out


def _read_all(data: bytes) -> list[tuple]:
    ts = open_tar_stream(io.BytesIO(data))
    out = []
    for e in ts:
        body = b""
        while piece := ts.read(100_000):
            body += piece
        out.append(
            (
                e.name,
                e.type,
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                e.linkname,
                e.devmajor,
                e.devminor,
                body,
                e.xattrs,
            )
        )
    return out


def _want(members) -> list[tuple]:
    kinds = {
        tarfile.DIRTYPE: b"5",
        tarfile.REGTYPE: b"0",
        tarfile.SYMTYPE: b"2",
        tarfile.LNKTYPE: b"1",
        tarfile.CHRTYPE: b"3",
    }
    return [
        (
            ti.name.encode() + (b"/" if ti.isdir() else b""),  # as tarfile writes it
            kinds[ti.type],
            ti.mode,
            ti.uid,
            ti.gid,
            int(ti.mtime),
            ti.linkname.encode(),
            ti.devmajor,
            ti.devminor,
            data or b"",
            {},
        )
        for ti, data in members
    ]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_formats_read_back_as_written(fmt):
    members = _members()
    assert _read_all(_tar(fmt, members)) == _want(members)


def test_ustar_prefix_and_compressed_streams():
    ti = tarfile.TarInfo("a" * 90 + "/" + "b" * 90)  # needs the ustar prefix field
    ti.size = 3
    raw = _tar(tarfile.USTAR_FORMAT, [(ti, b"xyz")])
    assert _read_all(raw)[0][0] == ti.name.encode()
    for packed in (
        gzip.compress(raw),
        zstandard.ZstdCompressor().compress(raw),
        bz2.compress(raw),
        lzma.compress(raw),
    ):
        assert _read_all(packed)[0][9] == b"xyz"


def test_pax_records_nanoseconds_xattrs_and_global_headers():
    ti = tarfile.TarInfo("f")
    ti.size = 1
    ti.pax_headers = {"mtime": "1600000000.123456789", "SCHILY.xattr.user.k": "v"}
    raw = _tar(tarfile.PAX_FORMAT, [(ti, b"x")], pax_headers={"uid": "77"})
    ts = open_tar_stream(io.BytesIO(raw))
    (e,) = list(ts)
    assert (e.mtime, e.mtime_nsec, e.uid, e.xattrs) == (
        1600000000,
        123456789,
        77,
        {b"user.k": b"v"},
    )


def test_bad_input_is_refused():
    raw = bytearray(_tar(tarfile.GNU_FORMAT, _members()))
    bad = bytearray(raw)
    bad[0] ^= 1  # header checksum no longer matches
    with pytest.raises(TarError, match="checksum"):
        _read_all(bytes(bad))
    with pytest.raises(TarError, match="truncated"):
        _read_all(bytes(raw[: 512 * 20 + 100]))
    sparse = bytearray(raw[:512])
    sparse[156:157] = b"S"
    sparse[148:156] = b"%06o\0 " % (sum(sparse[:148]) + 256 + sum(sparse[156:]))
    with pytest.raises(TarError, match="sparse"):
        _read_all(bytes(sparse) + bytes(1024))


def test_gunzip_members_padding_and_truncation():
    a, b = b"first " * 1000, b"second" * 1000
    stream = gzip.compress(a) + gzip.compress(b) + bytes(64)
    pieces = [stream[i : i + 777] for i in range(0, len(stream), 777)]
    assert b"".join(gunzip_pieces(pieces)) == a + b
    with pytest.raises(GzipError, match="truncated"):
        b"".join(gunzip_pieces([gzip.compress(a)[:-20]]))
    with pytest.raises(GzipError):
        b"".join(gunzip_pieces([b"\x1f\x8b\x08\x00garbage-garbage"]))
