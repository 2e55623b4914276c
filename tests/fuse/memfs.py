"""A small in-memory `Operations` for testing the FUSE session (no RAFS involved)."""

from __future__ import annotations

import errno
import stat
import threading
from collections import Counter
from collections.abc import Iterator

from nydus.errors import NydusError, StorageError
from nydus.format.rafs import Attr
from nydus.fuse.ops import DirRecord, Operations
from nydus.fuse.protocol import OpenFlags

ROOT, FILE, LINK, DIR, SLOW, BOOM, BAD = 1, 2, 3, 4, 5, 6, 7
CONTENT = bytes(range(256)) * 1024  # 256 KiB
MANY = 300  # entries of DIR: more than one readdir page
XATTRS = {b"user.one": b"1", b"user.big": b"x" * 300}


class MemFs(Operations):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.slow_release = threading.Event()
        self.slow_started = threading.Event()
        self.forgotten: list[tuple[int, int]] = []
        self.attrs = {
            ROOT: Attr(ROOT, stat.S_IFDIR | 0o755, 0, 0, 0, 1_700_000_000, 5, 3),
            FILE: Attr(FILE, stat.S_IFREG | 0o644, len(CONTENT), 1000, 1000, 1_600_000_000, 7, 1),
            LINK: Attr(LINK, stat.S_IFLNK | 0o777, 4, 0, 0, 0, 0, 1),
            DIR: Attr(DIR, stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0, 2),
            SLOW: Attr(SLOW, stat.S_IFREG | 0o644, 10, 0, 0, 0, 0, 1),
            BOOM: Attr(BOOM, stat.S_IFREG | 0o644, 10, 0, 0, 0, 0, 1),
            BAD: Attr(BAD, stat.S_IFREG | 0o644, 10, 0, 0, 0, 0, 1),
        }
        self.names = {b"file": FILE, b"link": LINK, b"dir": DIR, b"slow": SLOW, b"boom": BOOM}
        self.names[b"bad"] = BAD
        for i in range(MANY):
            self.attrs[100 + i] = Attr(100 + i, stat.S_IFREG | 0o600, i, 0, 0, 0, 0, 1)

    def _get(self, node: int) -> Attr:
        a = self.attrs.get(node)
        if a is None:
            raise OSError(errno.ENOENT, "no such node")
        return a

    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr] | None:
        self.calls["lookup"] += 1
        if parent == ROOT:
            node = self.names.get(name)
        elif parent == DIR and name.startswith(b"f") and name[1:].isdigit():
            node = 100 + int(name[1:]) if int(name[1:]) < MANY else None
        else:
            raise OSError(errno.ENOTDIR, "not a directory")
        return None if node is None else (node, self._get(node))

    def forget(self, items):  # type: ignore[no-untyped-def]
        self.forgotten.extend(items)

    def getattr(self, node: int) -> Attr:
        self.calls["getattr"] += 1
        return self._get(node)

    def readlink(self, node: int) -> bytes:
        if node != LINK:
            raise OSError(errno.EINVAL, "not a symlink")
        return b"file"

    def open(self, node: int, flags: int) -> tuple[int, int]:
        self.calls["open"] += 1
        if stat.S_ISDIR(self._get(node).mode):
            raise OSError(errno.EISDIR, "directory")
        return node, OpenFlags.KEEP_CACHE

    def read(self, fh: int, offset: int, size: int) -> bytes:
        self.calls["read"] += 1
        if fh == SLOW:
            self.slow_started.set()
            self.slow_release.wait(30)
            return b"late"
        if fh == BOOM:
            raise RuntimeError("a bug in the filesystem")
        if fh == BAD:
            raise StorageError("chunk digest mismatch")
        return CONTENT[offset : offset + size]

    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | None:
        return None

    def opendir(self, node: int) -> tuple[int, int]:
        self.calls["opendir"] += 1
        if not stat.S_ISDIR(self._get(node).mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        return node, OpenFlags.CACHE_DIR | OpenFlags.KEEP_CACHE

    def readdir(self, fh: int, offset: int, plus: bool) -> Iterator[DirRecord]:
        self.calls["readdirplus" if plus else "readdir"] += 1
        if fh == ROOT:
            entries = [(b".", ROOT), (b"..", ROOT), *sorted(self.names.items())]
        else:
            entries = [(b".", DIR), (b"..", ROOT)]
            entries += [(f"f{i}".encode(), 100 + i) for i in range(MANY)]
        for i in range(offset, len(entries)):
            name, node = entries[i]
            yield name, node, self.attrs[node], i + 1

    def getxattr(self, node: int, name: bytes) -> bytes:
        if node != FILE or name not in XATTRS:
            raise _enodata()
        return XATTRS[name]

    def listxattr(self, node: int) -> list[bytes]:
        return sorted(XATTRS) if node == FILE else []


def _enodata() -> NydusError:
    e = NydusError("no such attribute")
    e.errno = errno.ENODATA
    return e
