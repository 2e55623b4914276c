"""What a FUSE session asks of a filesystem (`Operations`), and `RafsOperations`, the thin
read-only adapter over the FUSE-free core `RafsFs`.

Node ids are the session's; an `Operations` maps them to its own inode numbers, so that
several filesystems can later share one mount under a pseudo root (each in its own node-id
range). Methods are synchronous and called from several threads at once; they raise
NydusError (or OSError) carrying the errno to answer.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence

from nydus.errors import NotFound
from nydus.format.rafs import Attr
from nydus.fs import RafsFs, StatFs
from nydus.fs.multi import MultiFs
from nydus.fuse.protocol import ROOT_ID, OpenFlags

__all__ = ["DEFAULT_TIMEOUT", "DirRecord", "Operations", "RafsOperations"]

#: kernel entry/attribute cache timeout: a RAFS image never changes
DEFAULT_TIMEOUT = 86400.0
#: (name, node id, attributes, offset of the next record)
DirRecord = tuple[bytes, int, Attr, int]


class Operations:
    """A read-only filesystem as the FUSE session sees it; the defaults refuse."""

    entry_timeout = DEFAULT_TIMEOUT
    attr_timeout = DEFAULT_TIMEOUT

    def entry_timeout_for(self, parent: int) -> float:
        """How long the kernel may keep names looked up in directory node `parent` (and
        their attributes)."""
        return self.entry_timeout

    def attr_timeout_for(self, node: int) -> float:
        return self.attr_timeout

    def dir_timeout_for(self, fh: int) -> float:
        """`entry_timeout_for` the directory opened as `fh` (readdirplus entries)."""
        return self.entry_timeout

    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr] | None:
        """(node id, attributes) of `name` in directory `parent`; None: it does not exist
        (the kernel caches the absence)."""
        raise OSError(errno.ENOSYS, "lookup")

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped `nlookup` references of each (node id, nlookup)."""

    def getattr(self, node: int) -> Attr:
        raise OSError(errno.ENOSYS, "getattr")

    def readlink(self, node: int) -> bytes:
        raise OSError(errno.EINVAL, "not a symlink")

    def open(self, node: int, flags: int) -> tuple[int, int]:
        """(file handle, FOPEN_* flags) for a read-only open."""
        raise OSError(errno.ENOSYS, "open")

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`; may block (called in a worker thread)."""
        raise OSError(errno.ENOSYS, "read")

    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | None:
        """`read` when it can be answered without blocking (from memory), else None."""
        return None

    def release(self, fh: int) -> None:
        pass

    def opendir(self, node: int) -> tuple[int, int]:
        raise OSError(errno.ENOTDIR, "opendir")

    def readdir(self, fh: int, offset: int, plus: bool) -> Iterator[DirRecord]:
        """Entries from position `offset` (0 = the start), lazily: the session stops
        (and closes the iterator) when the reply is full."""
        raise OSError(errno.ENOTDIR, "readdir")

    def releasedir(self, fh: int) -> None:
        pass

    def statfs(self) -> StatFs:
        return StatFs(4096, 4096, 0, 0, 0, 0, 0, 255)

    def getxattr(self, node: int, name: bytes) -> bytes:
        raise OSError(errno.ENODATA, "no such attribute")

    def listxattr(self, node: int) -> list[bytes]:
        return []

    def access(self, node: int, mask: int) -> None:
        pass


class RafsOperations(Operations):
    """A `RafsFs` (or a `MultiFs`: several under a pseudo root) over FUSE. Node 1 is the
    root; the inode that would have number 1 (if any) takes the root's number, so the
    mapping stays one to one. Directories whose entries come and go (a `MultiFs` pseudo
    root: `volatile`) are never cached by the kernel; everything else for `timeout`."""

    def __init__(self, fs: RafsFs | MultiFs, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.fs = fs
        self.root = fs.root_ino
        self.entry_timeout = timeout
        self.attr_timeout = timeout
        self._volatile = fs.volatile if isinstance(fs, MultiFs) else None

    def _changing(self, ino: int) -> bool:
        return self._volatile is not None and self._volatile(ino)

    def entry_timeout_for(self, parent: int) -> float:
        return 0.0 if self._changing(self._ino(parent)) else self.entry_timeout

    def attr_timeout_for(self, node: int) -> float:
        return 0.0 if self._changing(self._ino(node)) else self.attr_timeout

    def dir_timeout_for(self, fh: int) -> float:
        return 0.0 if self._changing(fh) else self.entry_timeout

    # ---- node id <-> RAFS inode ----------------------------------------------------------
    def _ino(self, node: int) -> int:
        if node == ROOT_ID:
            return self.root
        return ROOT_ID if node == self.root else node

    _node = _ino  # the swap is its own inverse

    # ---- metadata ------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr] | None:
        try:
            a = self.fs.lookup(self._ino(parent), name)
        except NotFound:
            return None
        return self._node(a.ino), a

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        self.fs.metrics.count("forget" if len(items) == 1 else "batch_forget")

    def getattr(self, node: int) -> Attr:
        return self.fs.getattr(self._ino(node))

    def readlink(self, node: int) -> bytes:
        return self.fs.readlink(self._ino(node))

    def opendir(self, node: int) -> tuple[int, int]:
        ino = self._ino(node)
        self.fs.opendir(ino)
        if self._changing(ino):
            return ino, 0
        # the image never changes: the kernel keeps listings in its cache
        return ino, OpenFlags.CACHE_DIR | OpenFlags.KEEP_CACHE

    def readdir(self, fh: int, offset: int, plus: bool) -> Iterator[DirRecord]:
        with self.fs.metrics.op("readdirplus" if plus else "readdir", fh):
            for item in self.fs.iter_dir(fh, offset):
                yield item.name, self._node(item.attr.ino), item.attr, item.next_offset

    def statfs(self) -> StatFs:
        return self.fs.statfs()

    def getxattr(self, node: int, name: bytes) -> bytes:
        return self.fs.getxattr(self._ino(node), name)

    def listxattr(self, node: int) -> list[bytes]:
        return self.fs.listxattr(self._ino(node))

    def access(self, node: int, mask: int) -> None:
        self.fs.access(self._ino(node), mask)

    # ---- files ---------------------------------------------------------------------------
    def open(self, node: int, flags: int) -> tuple[int, int]:
        ino = self._ino(node)
        self.fs.open(ino)
        return ino, OpenFlags.KEEP_CACHE

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self.fs.read(fh, offset, size)

    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | None:
        return self.fs.read_cached(fh, offset, size)

    def release(self, fh: int) -> None:
        self.fs.release(fh)
