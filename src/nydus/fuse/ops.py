"""pyfuse3 operations over a `RafsFs`: a thin, read-only adapter.

Metadata operations answer inline (the bootstrap is memory-mapped); file reads, which may
fetch and decompress chunks, run in worker threads bounded by a CapacityLimiter, so one
slow fetch never stalls reads of other files.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from nydus.errors import NydusError
from nydus.format.rafs import Attr
from nydus.fs import RafsFs
from nydus.fs.multi import MultiFs

__all__ = ["DEFAULT_TIMEOUT", "RafsOperations"]

log = logging.getLogger(__name__)

#: kernel entry/attribute cache timeout: a RAFS image never changes
DEFAULT_TIMEOUT = 86400.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
T = TypeVar("T")


def _erofs(*_args: Any, **_kwargs: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


class RafsOperations(pyfuse3.Operations):
    """Read-only FUSE operations; FUSE node 1 is the RAFS root inode."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        fs: RafsFs | MultiFs,
        limiter: trio.CapacityLimiter | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.fs = fs
        self.limiter = limiter or trio.CapacityLimiter(4)
        self.timeout = timeout
        self.root = fs.root_ino
        # MultiFs: entries of its pseudo root come and go with API mounts (never cached)
        self._volatile = getattr(fs, "volatile", None)

    def _timeout(self, parent: int) -> float:
        return 0.0 if self._volatile is not None and self._volatile(parent) else self.timeout

    # ---- inode mapping ---------------------------------------------------------------
    def _ino(self, fuse_ino: int) -> int:
        return self.root if fuse_ino == pyfuse3.ROOT_INODE else fuse_ino

    def _node(self, ino: int) -> int:
        return pyfuse3.ROOT_INODE if ino == self.root else ino

    def _entry(
        self, a: Attr, node: int | None = None, timeout: float | None = None
    ) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = self._node(a.ino) if node is None else node
        e.generation = 0
        e.entry_timeout = self.timeout if timeout is None else timeout
        e.attr_timeout = e.entry_timeout
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 4096
        e.st_blocks = (a.size + 511) // 512
        ns = a.mtime * 1_000_000_000 + a.mtime_nsec
        e.st_atime_ns = ns
        e.st_mtime_ns = ns
        e.st_ctime_ns = ns
        return e

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except NydusError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODATA):
                log.debug("%s%r: %s", getattr(fn, "__name__", "op"), args, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected error in %s%r", getattr(fn, "__name__", "op"), args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self._call, fn, *args, limiter=self.limiter)

    # ---- metadata ----------------------------------------------------------------------
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._ino(parent_inode)
        timeout = self._timeout(parent)
        try:
            a = self._call(self.fs.lookup, parent, name)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # the image never changes: let the kernel cache the name's absence (st_ino 0)
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = timeout
            return neg
        return self._entry(a, timeout=timeout)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        ino = self._ino(inode)
        a = self._call(self.fs.getattr, ino)
        # the reply to getattr carries no node id: report the RAFS inode number (the nid)
        return self._entry(a, node=a.ino, timeout=self._timeout(ino))

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return self._call(self.fs.readlink, self._ino(inode))

    async def opendir(self, inode: int, ctx: Any = None) -> int:
        ino = self._ino(inode)
        self._call(self.fs.opendir, ino)
        return ino

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        def fill() -> None:
            timeout = self._timeout(fh)
            with self.fs.metrics.op("readdirplus", fh):
                for item in self.fs.iter_dir(fh, start_id):
                    dot = item.name in (b".", b"..")
                    # dot entries are never linked by the kernel: show the real inode number
                    node = item.attr.ino if dot else None
                    entry = self._entry(item.attr, node=node, timeout=timeout)
                    if not pyfuse3.readdir_reply(token, item.name, entry, item.next_offset):
                        break

        self._call(fill)

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        st = self._call(self.fs.statfs)
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.bsize
        s.f_frsize = st.frsize
        s.f_blocks = st.blocks
        s.f_bfree = st.bfree
        s.f_bavail = st.bavail
        s.f_files = st.files
        s.f_ffree = st.ffree
        s.f_favail = st.ffree
        s.f_namemax = st.namemax
        return s

    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        return self._call(self.fs.getxattr, self._ino(inode), name)

    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        return self._call(self.fs.listxattr, self._ino(inode))

    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        self._call(self.fs.access, self._ino(inode), mode)
        return True

    async def forget(self, inode_list: Any) -> None:
        n = len(inode_list)
        if n:
            self.fs.metrics.count("forget" if n == 1 else "batch_forget")

    # ---- files -------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        ino = self._ino(inode)
        self._call(self.fs.open, ino)
        return pyfuse3.FileInfo(fh=ino, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        # data already decompressed in memory is answered inline; anything that may
        # fetch, decompress or touch the disk goes to a worker thread
        data = self._call(self.fs.read_cached, fh, off, size)
        if data is not None:
            return data
        return await self._in_thread(self.fs.read, fh, off, size)

    async def release(self, fh: int) -> None:
        self._call(self.fs.release, fh)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    # ---- everything that would modify the image: read-only filesystem --------------------
    setattr = _erofs
    mknod = _erofs
    mkdir = _erofs
    unlink = _erofs
    rmdir = _erofs
    symlink = _erofs
    rename = _erofs
    link = _erofs
    write = _erofs
    create = _erofs
    setxattr = _erofs
    removexattr = _erofs
