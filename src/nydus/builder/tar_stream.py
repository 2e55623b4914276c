"""A fast streaming tar reader for layer tars: ustar, POSIX PAX (`x`, `g`) and GNU long
names (`L`, `K`), base-256 numbers, old v7 headers; never seeks. Compressed input (gzip,
zstd, bzip2, xz) is recognised by its magic and decoded on the way (gzip with the fastest
decoder at hand).

Python's `tarfile` in stream mode reads 10 KiB at a time and builds a `TarInfo` through
several layers of calls per header; a layer of 25,000 files spends seconds there. This
reader pulls 1 MiB at a time and hands file data out as slices of that buffer.
GNU sparse members are refused (OCI layers do not use them).
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from nydus.errors import BuildError
from nydus.utils.inflate import GzipError, gunzip_pieces

__all__ = ["TarEntry", "TarStream", "open_tar_stream"]

BLOCK = 512
READ = 1 << 20
_ZERO = bytes(BLOCK)


@dataclass(slots=True)
class TarEntry:
    name: bytes
    type: (
        bytes  # b"0" regular, b"1" hard link, b"2" symlink, b"3" chr, b"4" blk, b"5" dir, b"6" fifo
    )
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_nsec: int
    linkname: bytes
    devmajor: int
    devminor: int
    pax: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def xattrs(self) -> dict[bytes, bytes]:
        p = b"SCHILY.xattr."
        return {k[len(p) :]: v for k, v in self.pax.items() if k.startswith(p)}


class TarError(BuildError):
    pass


def _num(field_: bytes, what: str) -> int:
    if field_[:1] and field_[0] & 0x80:  # GNU base-256
        n = int.from_bytes(field_, "big", signed=False)
        if field_[0] & 0x40:  # negative
            n -= 1 << (8 * len(field_))
        else:
            n &= (1 << (8 * len(field_) - 1)) - 1
        return n
    s = field_.split(b"\0", 1)[0].strip(b" \0")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise TarError(f"invalid tar header: {what} field {field_!r}") from None


def _str(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad with NULs
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise TarError("invalid PAX header record")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise TarError("invalid PAX header record length") from None
        rec = data[sp + 1 : pos + length]
        if length <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            raise TarError("invalid PAX header record")
        key, _, value = rec[:-1].partition(b"=")
        out[key] = value
        pos += length
    return out


class TarStream:
    """Iterate entries; after an entry, `read(n)` gives its data (rest skipped on next)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = b""
        self._pos = 0
        self._left = 0  # data bytes of the current entry not read yet
        self._pad = 0
        self._eof = False

    # -- buffered input --------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        """Make at least n bytes available; False at end of input."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos :]]
        while have < n and not self._eof:
            more = self._read(max(READ, n - have))
            if not more:
                self._eof = True
                break
            parts.append(more)
            have += len(more)
        self._buf, self._pos = b"".join(parts), 0
        return have >= n

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise TarError("truncated tar (unexpected end of data)")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def _skip(self, n: int) -> None:
        while n:
            have = len(self._buf) - self._pos
            if have == 0 and not self._fill(1):
                raise TarError("truncated tar (unexpected end of data)")
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            n -= step

    def drain(self) -> None:
        """Read the input to its end, past the end-of-archive blocks: a decoder checks its
        trailer there (gzip CRC and length, trailing data)."""
        self._buf, self._pos, self._left, self._pad = b"", 0, 0, 0
        while not self._eof:
            if not self._read(READ):
                self._eof = True

    def read(self, n: int) -> bytes:
        """Data of the current entry (at most its remaining size)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        have = len(self._buf) - self._pos
        if have == 0:
            self._fill(min(n, READ))
            have = len(self._buf) - self._pos
            if have == 0:
                raise TarError("truncated tar (file data ends early)")
        n = min(n, have)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        self._left -= n
        return out

    # -- entries -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[TarEntry]:
        global_pax: dict[bytes, bytes] = {}
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        while True:
            if self._left or self._pad:
                self._skip(self._left + self._pad)
                self._left = self._pad = 0
            if not self._fill(BLOCK):
                if len(self._buf) - self._pos:
                    raise TarError("truncated tar (partial header)")
                return  # no end-of-archive blocks: accepted, as tarfile does
            hdr = self._take(BLOCK)
            if hdr == _ZERO:
                return
            chk = _num(hdr[148:156], "checksum")
            unsigned = sum(hdr[:148]) + 256 + sum(hdr[156:])  # the field counts as spaces
            if chk != unsigned:
                high = sum(1 for b in hdr[:148] + hdr[156:] if b > 127)
                if chk != unsigned - 256 * high:  # some writers sum signed bytes
                    raise TarError("invalid tar header checksum")
            kind = hdr[156:157]
            size = _num(hdr[124:136], "size")
            if size < 0:
                raise TarError(f"size {size} is out of range")
            if kind in (b"x", b"g", b"L", b"K"):
                data = self._take(size)
                self._skip(-size % BLOCK)
                if kind == b"x":
                    pax.update(_parse_pax(data))
                elif kind == b"g":
                    global_pax.update(_parse_pax(data))
                elif kind == b"L":
                    long_name = _str(data)
                else:
                    long_link = _str(data)
                continue
            if kind == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax):
                raise TarError("GNU sparse tar members are not supported")
            fields = {**global_pax, **pax} if global_pax else pax
            name = _str(hdr[0:100])
            if hdr[257:263] == b"ustar\0":  # POSIX: a prefix may hold the leading path
                prefix = _str(hdr[345:500])
                if prefix:
                    name = prefix + b"/" + name
            if long_name is not None:
                name = long_name
            name = fields.get(b"path", name)
            link = fields.get(
                b"linkpath", long_link if long_link is not None else _str(hdr[157:257])
            )
            if kind in (b"\0", b"") or kind == b"7":
                kind = b"5" if name.endswith(b"/") else b"0"
            if b"size" in fields:
                size = _int(fields[b"size"], "size")
                if size < 0:
                    raise TarError(f"size {size} is out of range")
            mtime, nsec = _num(hdr[136:148], "mtime"), 0
            if b"mtime" in fields:
                mtime, nsec = _pax_time(fields[b"mtime"])
            entry = TarEntry(
                name=name,
                type=kind,
                mode=_num(hdr[100:108], "mode"),
                uid=_int(fields[b"uid"], "uid") if b"uid" in fields else _num(hdr[108:116], "uid"),
                gid=_int(fields[b"gid"], "gid") if b"gid" in fields else _num(hdr[116:124], "gid"),
                size=size if kind == b"0" else 0,
                mtime=mtime,
                mtime_nsec=nsec,
                linkname=link,
                devmajor=_num(hdr[329:337], "devmajor"),
                devminor=_num(hdr[337:345], "devminor"),
                pax=dict(fields),
            )
            pax = {}
            long_name = long_link = None
            self._left, self._pad = size, -size % BLOCK  # unread data is skipped by next()
            yield entry


def _int(value: bytes, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TarError(f"invalid PAX {what} {value!r}") from None


def _pax_time(value: bytes) -> tuple[int, int]:
    sign = -1 if value.startswith(b"-") else 1
    whole, _, frac = value.lstrip(b"-").partition(b".")
    try:
        sec = int(whole or b"0")
        nsec = int((frac + b"000000000")[:9]) if frac else 0
    except ValueError:
        shown = value[:40].decode("utf-8", "backslashreplace")
        raise TarError(f"PAX mtime {shown!r} is not a time") from None
    if sign < 0 and nsec:
        return -sec - 1, 1_000_000_000 - nsec
    return sign * sec, nsec


def open_tar_stream(stream: BinaryIO) -> TarStream:
    """A TarStream over `stream`, decompressing gzip, zstd, bzip2 or xz input."""
    head = stream.read(6)
    if head[:2] == b"\x1f\x8b":
        pieces = gunzip_pieces(_pieces(head, stream))
        return TarStream(_Joined(pieces).read)
    if head[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        d = zstandard.ZstdDecompressor().decompressobj()
        return TarStream(_Joined(_decoded(head, stream, d.decompress)).read)
    if head[:3] == b"BZh":
        return TarStream(_Joined(_decoded(head, stream, bz2.BZ2Decompressor().decompress)).read)
    if head[:6] == b"\xfd7zXZ\0":
        return TarStream(_Joined(_decoded(head, stream, lzma.LZMADecompressor().decompress)).read)
    return TarStream(_Joined(_pieces(head, stream)).read)


def _pieces(head: bytes, stream: BinaryIO) -> Iterator[bytes]:
    if head:
        yield head
    while piece := stream.read(READ):
        yield piece


def _decoded(head: bytes, stream: BinaryIO, fn: Callable[[bytes], bytes]) -> Iterator[bytes]:
    for piece in _pieces(head, stream):
        out = fn(piece)
        if out:
            yield out


class _Joined:
    """`read(n)` over an iterator of pieces (returns at most one piece's worth)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._it = pieces

    def read(self, n: int) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            return b""
        except GzipError as exc:
            raise TarError(str(exc)) from None
