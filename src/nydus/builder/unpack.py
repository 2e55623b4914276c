"""`nydus-image unpack`: an image's tree as an OCI-style tar, streamed in bounded memory.

Entries come parents first, children sorted, the root itself left out (as upstream does);
every entry carries its mode bits, owner, mtime (nanoseconds in a PAX `mtime` record when
not whole seconds) and extended attributes as PAX `SCHILY.xattr.NAME` records. The second
and later names of an inode are hard links to the first; names and link targets too long
for a ustar header, or not ASCII, go into PAX `path`/`linkpath` records (raw bytes with
`hdrcharset=BINARY` when not UTF-8). Sockets are left out (OCI layers cannot hold them).

File data is read through the chunk device (digests verified) by a small pool of threads a
bounded number of bytes ahead of the writer, so memory stays at about `AHEAD_BYTES`.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from nydus.builder.output import AtomicFile
from nydus.builder.source_image import ImageSource
from nydus.errors import BuildError
from nydus.format.rafs import Attr, DirEntry, RafsSuper

__all__ = ["UnpackStats", "iter_tar", "unpack"]

log = logging.getLogger(__name__)

WINDOW = 4 << 20  # bytes of one file read at a time
AHEAD_BYTES = 64 << 20  # file data read ahead of the writer
BLOCK = 512
RECORD = 20 * BLOCK
_ENC = "utf-8"


@dataclass
class UnpackStats:
    entries: int = 0
    files: int = 0
    hardlinks: int = 0
    bytes: int = 0  # file data written
    skipped_sockets: int = 0
    tar_size: int = 0


def _name(path: bytes) -> bytes:
    return path.lstrip(b"/")


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One `LEN KEY=VALUE\\n` record; LEN counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _entry(
    path: bytes,
    a: Attr,
    kind: bytes,
    *,
    link: bytes = b"",
    size: int = 0,
    xattrs: dict[bytes, bytes] | None = None,
) -> bytes:
    """The header blocks of one entry: a PAX extended header when needed, then ustar."""
    name = _name(path)
    if kind == tarfile.DIRTYPE:
        name += b"/"
    records: list[bytes] = []
    if len(name) > 100:
        records.append(_pax_record(b"path", name))
    if len(link) > 100:
        records.append(_pax_record(b"linkpath", link))
    uid, gid = a.uid, a.gid
    if uid >= 1 << 21:
        records.append(_pax_record(b"uid", str(uid).encode()))
        uid = 0
    if gid >= 1 << 21:
        records.append(_pax_record(b"gid", str(gid).encode()))
        gid = 0
    if size >= 1 << 33:
        records.append(_pax_record(b"size", str(size).encode()))
    mtime = a.mtime
    if a.mtime_nsec or not 0 <= mtime < 1 << 33:
        records.append(_pax_record(b"mtime", _pax_time(mtime, a.mtime_nsec)))
        mtime = max(0, min(mtime, (1 << 33) - 1))
    for k in sorted(xattrs or {}):
        records.append(_pax_record(b"SCHILY.xattr." + k, (xattrs or {})[k]))
    out = b""
    if records:
        data = b"".join(records)
        x = _ustar(b"././@PaxHeader", 0o644, 0, 0, len(data), 0, tarfile.XHDTYPE, b"", 0, 0)
        out = x + data + b"\0" * (-len(data) % BLOCK)
    dev = a.rdev if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE) else 0
    return out + _ustar(
        name,
        stat.S_IMODE(a.mode),
        uid,
        gid,
        size if size < 1 << 33 else 0,
        mtime,
        kind,
        link[:100],
        os.major(dev),
        os.minor(dev),
    )


def _pax_time(sec: int, nsec: int) -> bytes:
    ns = sec * 1_000_000_000 + nsec
    sign = b"-" if ns < 0 else b""
    whole, frac = divmod(abs(ns), 1_000_000_000)
    return sign + b"%d.%09d" % (whole, frac)


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    kind: bytes,
    link: bytes,
    major: int,
    minor: int,
) -> bytes:
    prefix = b""
    if len(name) > 100:
        # keep what fits: the full name is in the PAX record; split at a slash if possible
        cut = name.rfind(b"/", 0, 156)
        if cut > 0 and len(name) - cut - 1 <= 100:
            prefix, name = name[:cut], name[cut + 1 :]
        else:
            name = name[-100:]
    hdr = b"".join(
        (
            name.ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b" " * 8,
            kind,
            link.ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 32,
            b"\0" * 32,
            _octal(major, 8),
            _octal(minor, 8),
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        )
    )
    chksum = b"%06o\0 " % sum(hdr)
    return hdr[:148] + chksum + hdr[156:]


class _Reader:
    """Reads windows of file data on a thread pool, in order, a bounded amount ahead."""

    def __init__(self, src: ImageSource, workers: int) -> None:
        self.src = src
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="unpack")

    def read(self, ino: int, size: int, offset: int, n: int) -> bytes:
        dev = self.src.device
        if dev is None:
            raise BuildError("the image has file data but no blob source was given")
        data = dev.read(self.src.sb.chunks(ino), size, offset, n)
        if len(data) != n:
            raise BuildError(f"inode {ino}: read {len(data)} of {n} bytes at {offset}")
        return data

    def submit(self, ino: int, size: int, offset: int, n: int) -> Future[bytes]:
        return self.pool.submit(self.read, ino, size, offset, n)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# an item of output: bytes to write now, or file data being read (future, its length)
_Item = bytes | tuple[Future[bytes], int]


def _items(src: ImageSource, reader: _Reader, stats: UnpackStats) -> Iterator[_Item]:
    sb = src.sb
    first_name: dict[int, bytes] = {}
    for path, ino, a in _dfs(sb):
        fmt = stat.S_IFMT(a.mode)
        if fmt == stat.S_IFSOCK:
            stats.skipped_sockets += 1
            log.warning("unpack: socket %s left out", _show(path))
            continue
        stats.entries += 1
        if fmt != stat.S_IFDIR and ino in first_name:
            stats.hardlinks += 1
            yield _entry(path, a, tarfile.LNKTYPE, link=_name(first_name[ino]))
            continue
        xattrs = sb.xattrs(ino)
        if fmt == stat.S_IFDIR:
            yield _entry(path, a, tarfile.DIRTYPE, xattrs=xattrs)
            continue
        first_name[ino] = path
        if fmt == stat.S_IFLNK:
            yield _entry(path, a, tarfile.SYMTYPE, link=sb.readlink(ino), xattrs=xattrs)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            kind = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
            yield _entry(path, a, kind, xattrs=xattrs)
        elif fmt == stat.S_IFIFO:
            yield _entry(path, a, tarfile.FIFOTYPE, xattrs=xattrs)
        elif fmt == stat.S_IFREG:
            stats.files += 1
            stats.bytes += a.size
            yield _entry(path, a, tarfile.REGTYPE, size=a.size, xattrs=xattrs)
            for off in range(0, a.size, WINDOW):
                n = min(WINDOW, a.size - off)
                yield (reader.submit(ino, a.size, off, n), n)
            if a.size % BLOCK:
                yield b"\0" * (-a.size % BLOCK)
        else:
            raise BuildError(f"inode {ino} ({_show(path)}): unknown file type 0o{fmt:o}")


def _dfs(sb: RafsSuper) -> Iterator[tuple[bytes, int, Attr]]:
    """Every entry but the root, depth first (a directory's whole subtree follows it, as
    tar readers that set directory times when they leave a directory expect)."""
    stack: list[Iterator[DirEntry]] = [iter(sb.readdir(sb.root_ino))]
    prefixes = [b""]
    while stack:
        ent = next(stack[-1], None)
        if ent is None:
            stack.pop()
            prefixes.pop()
            continue
        path = prefixes[-1] + b"/" + ent.name
        a = sb.attr(ent.ino)
        yield path, ent.ino, a
        if a.is_dir:
            stack.append(iter(sb.readdir(ent.ino)))
            prefixes.append(path)


def _show(path: bytes) -> str:
    return path.decode(_ENC, "backslashreplace")


def iter_tar(src: ImageSource, stats: UnpackStats | None = None) -> Iterator[bytes]:
    """The tar stream of the image, piece by piece."""
    stats = stats if stats is not None else UnpackStats()
    reader = _Reader(src, workers=max(2, min(8, 2 * (os.cpu_count() or 1))))
    pending: deque[_Item] = deque()
    ahead = 0
    total = 0
    try:
        for item in _items(src, reader, stats):
            pending.append(item)
            if isinstance(item, tuple):
                ahead += item[1]
            while pending and (ahead > AHEAD_BYTES or not isinstance(pending[0], tuple)):
                piece, ahead = _pop(pending, ahead)
                total += len(piece)
                yield piece
        while pending:
            piece, ahead = _pop(pending, ahead)
            total += len(piece)
            yield piece
        end = 2 * BLOCK
        end += -(total + end) % RECORD
        total += end
        yield b"\0" * end
        stats.tar_size = total
    finally:
        for item in pending:
            if isinstance(item, tuple):
                item[0].cancel()
        reader.close()


def _pop(pending: deque[_Item], ahead: int) -> tuple[bytes, int]:
    item = pending.popleft()
    if isinstance(item, bytes):
        return item, ahead
    fut, n = item
    return fut.result(), ahead - n


def unpack(src: ImageSource, output: str) -> UnpackStats:
    """Write the image's tree to the tar file `output` (a temporary name until complete)."""
    stats = UnpackStats()
    out = AtomicFile(output)
    try:
        fh: BinaryIO = out.open()
        for piece in iter_tar(src, stats):
            try:
                fh.write(piece)
            except OSError as exc:
                raise BuildError(f"cannot write {output}: {exc.strerror}") from exc
        out.commit()
    except BaseException:
        out.discard()
        raise
    return stats
