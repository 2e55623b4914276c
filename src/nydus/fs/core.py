"""`RafsFs`: the filesystem a RAFS bootstrap describes, answered by inode number.

FUSE-free and synchronous: lookup, getattr, readdir (stable offsets), read, readlink,
xattrs, statfs. Safe to call from many threads. Every failure is a NydusError carrying the
errno a FUSE reply should use.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from nydus.errors import FormatError, NotFound, NydusError, StorageError
from nydus.format.constants import MAX_NAME_LEN, SuperFlags
from nydus.format.rafs import Attr, ChunkRef, RafsSuper
from nydus.fs.metrics import FsMetrics
from nydus.fs.pattern import AccessPattern
from nydus.utils.lru import Lru

__all__ = ["ChunkReader", "DirItem", "FsError", "FsOptions", "RafsFs", "StatFs"]


class FsError(NydusError):
    """A filesystem operation error with an explicit errno."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True, slots=True)
class FsOptions:
    enable_xattr: bool = False
    iostats_files: bool = False
    access_pattern: bool = False
    latest_read_files: bool = False
    id: str = "/"


@dataclass(frozen=True, slots=True)
class StatFs:
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int


@dataclass(frozen=True, slots=True)
class DirItem:
    """One readdir result: name, its attributes, and the offset of the next entry."""

    name: bytes
    attr: Attr
    next_offset: int


class ChunkReader(Protocol):
    """What `RafsFs` needs of the thing that serves file data (`storage.ChunkDevice`).

    `chunks` are a regular file's chunks in file order (`RafsSuper.chunks`), `file_size`
    its size; both calls return at most `size` bytes from `offset` (fewer at EOF).
    """

    def read(self, chunks: Sequence[ChunkRef], file_size: int, offset: int, size: int) -> bytes:
        """The bytes, fetched and verified as needed (blocks on I/O)."""
        ...

    def read_memory(
        self, chunks: Sequence[ChunkRef], file_size: int, offset: int, size: int
    ) -> bytes | None:
        """The bytes if every chunk they need is already in memory, else None; never
        blocks on I/O (callers may use it on an event loop)."""
        ...


class RafsFs:
    """Read-only filesystem over a `RafsSuper` and a chunk device (None: no file data)."""

    def __init__(
        self,
        sb: RafsSuper,
        device: ChunkReader | None = None,
        options: FsOptions | None = None,
        *,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        self.sb = sb
        self.device = device
        self.options = options or FsOptions()
        self.root_ino = sb.root_ino
        self.explicit_uid_gid = bool(sb.flags & SuperFlags.EXPLICIT_UID_GID)
        self.uid = os.geteuid() if uid is None else uid
        self.gid = os.getegid() if gid is None else gid
        self.metrics = FsMetrics(
            self.options.id,
            self.options.iostats_files,
            self.options.access_pattern,
            self.options.latest_read_files,
        )
        #: first accesses of files and chunks (`access_pattern`), None when off
        self.pattern = AccessPattern(sb) if self.options.access_pattern else None
        self._chunks: Lru[int, list[ChunkRef]] = Lru(1024)
        self._dirs: Lru[int, list[tuple[bytes, int]]] = Lru(256)

    # ---- helpers -------------------------------------------------------------------
    def _attr(self, ino: int) -> Attr:
        try:
            a = self.sb.attr(ino)
        except FormatError as exc:
            raise FsError(errno.EIO, f"inode {ino}: {exc}") from exc
        if not self.explicit_uid_gid:
            a = replace(a, uid=self.uid, gid=self.gid)
        return a

    def _dir_attr(self, ino: int) -> Attr:
        a = self._attr(ino)
        if not a.is_dir:
            raise FsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return a

    def _parent(self, ino: int) -> int:
        if ino == self.root_ino:
            return ino
        try:
            p = self.sb.parent(ino)
        except FormatError as exc:
            raise FsError(errno.EIO, f"inode {ino}: {exc}") from exc
        return p or self.root_ino

    def _children(self, ino: int) -> list[tuple[bytes, int]]:
        children = self._dirs.get(ino)
        if children is None:
            try:
                children = [(e.name, e.ino) for e in self.sb.readdir(ino)]
            except FormatError as exc:
                raise FsError(errno.EIO, f"directory {ino}: {exc}") from exc
            self._dirs.put(ino, children)
        return children

    def chunks(self, ino: int) -> list[ChunkRef]:
        refs = self._chunks.get(ino)
        if refs is None:
            try:
                refs = self.sb.chunks(ino)
            except FormatError as exc:
                raise FsError(errno.EIO, f"inode {ino}: {exc}") from exc
            self._chunks.put(ino, refs)
        return refs

    # ---- operations ----------------------------------------------------------------
    def getattr(self, ino: int) -> Attr:
        with self.metrics.op("getattr", ino):
            return self._attr(ino)

    def lookup(self, parent: int, name: bytes) -> Attr:
        with self.metrics.op("lookup", parent):
            self._dir_attr(parent)
            if len(name) > MAX_NAME_LEN:
                raise FsError(errno.ENAMETOOLONG, f"name of {len(name)} bytes is too long")
            if name == b".":
                return self._attr(parent)
            if name == b"..":
                return self._attr(self._parent(parent))
            try:
                ino = self.sb.lookup(parent, name)
            except FormatError as exc:
                raise FsError(errno.EIO, f"directory {parent}: {exc}") from exc
            if ino is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            return self._attr(ino)

    def opendir(self, ino: int) -> None:
        with self.metrics.op("opendir", ino):
            self._dir_attr(ino)

    def readdir(
        self, ino: int, offset: int = 0, plus: bool = False, limit: int | None = None
    ) -> list[DirItem]:
        """Entries from position `offset`: 0 is `.`, 1 is `..`, then the sorted children.

        `next_offset` of each item resumes the listing right after it; at most `limit`
        items are returned (all when None).
        """
        with self.metrics.op("readdirplus" if plus else "readdir", ino):
            out: list[DirItem] = []
            for item in self.iter_dir(ino, offset):
                if limit is not None and len(out) >= limit:
                    break
                out.append(item)
            return out

    def iter_dir(self, ino: int, offset: int = 0) -> Iterator[DirItem]:
        """Lazy `readdir` without metrics accounting (the caller accounts the operation)."""
        self._dir_attr(ino)
        if offset <= 0:
            yield DirItem(b".", self._attr(ino), 1)
        if offset <= 1:
            yield DirItem(b"..", self._attr(self._parent(ino)), 2)
        children = self._children(ino)
        for i in range(max(offset - 2, 0), len(children)):
            name, child = children[i]
            yield DirItem(name, self._attr(child), i + 3)

    def open(self, ino: int) -> Attr:
        with self.metrics.op("open", ino):
            a = self._attr(ino)
            if a.is_dir:
                raise FsError(errno.EISDIR, f"inode {ino} is a directory")
            self.metrics.record_open()
            return a

    def release(self, ino: int) -> None:
        with self.metrics.op("release", ino):
            self.metrics.record_release()

    def read(self, ino: int, offset: int, size: int) -> bytes:
        with self.metrics.op("read", ino):
            a = self._attr(ino)
            if a.is_dir:
                raise FsError(errno.EISDIR, f"inode {ino} is a directory")
            if not a.is_reg:
                raise FsError(errno.EINVAL, f"inode {ino} is not a regular file")
            if offset < 0 or size < 0:
                raise FsError(errno.EINVAL, "negative offset or size")
            if offset >= a.size or size == 0:
                data = b""
            else:
                if self.device is None:
                    raise StorageError(f"inode {ino}: the filesystem has no data device")
                try:
                    data = self.device.read(self.chunks(ino), a.size, offset, size)
                except FormatError as exc:
                    raise FsError(errno.EIO, f"inode {ino}: {exc}") from exc
                if self.pattern is not None:
                    self.pattern.record_read(ino, self.chunks(ino), offset, len(data))
            self.metrics.record_read(ino, len(data))
            return data

    def read_cached(self, ino: int, offset: int, size: int) -> bytes | None:
        """`read` served from chunks already decompressed in memory, without blocking on
        I/O; None when the data is not all there (then call `read`)."""
        if self.device is None or size <= 0:
            return None
        t0 = time.monotonic()
        try:
            a = self.sb.attr(ino)
            if not a.is_reg or offset < 0 or offset >= a.size:
                return None
            data = self.device.read_memory(self.chunks(ino), a.size, offset, size)
        except NydusError:
            return None  # let `read` report it
        if data is not None:
            if self.pattern is not None:
                self.pattern.record_read(ino, self.chunks(ino), offset, len(data))
            self.metrics.record_op("read", ino, int((time.monotonic() - t0) * 1_000_000))
            self.metrics.record_read(ino, len(data))
        return data

    def readlink(self, ino: int) -> bytes:
        with self.metrics.op("readlink", ino):
            a = self._attr(ino)
            if not a.is_symlink:
                raise FsError(errno.EINVAL, f"inode {ino} is not a symlink")
            try:
                return self.sb.readlink(ino)
            except FormatError as exc:
                raise FsError(errno.EIO, f"inode {ino}: {exc}") from exc

    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        self._attr(ino)
        if not self.options.enable_xattr:
            return {}
        try:
            return self.sb.xattrs(ino)
        except FormatError as exc:
            raise FsError(errno.EIO, f"inode {ino}: {exc}") from exc

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self.metrics.op("getxattr", ino):
            value = self._xattrs(ino).get(name)
            if value is None:
                raise FsError(errno.ENODATA, f"inode {ino} has no xattr {name!r}")
            return value

    def listxattr(self, ino: int) -> list[bytes]:
        with self.metrics.op("listxattr", ino):
            return sorted(self._xattrs(ino))

    def access(self, ino: int, mode: int) -> None:
        with self.metrics.op("access", ino):
            self._attr(ino)

    def statfs(self) -> StatFs:
        with self.metrics.op("statfs", self.root_ino):
            blocks = sum((b.uncompressed_size + 4095) // 4096 for b in self.sb.blobs)
            return StatFs(
                bsize=4096,
                frsize=4096,
                blocks=blocks,
                bfree=0,
                bavail=0,
                files=self.sb.inode_count,
                ffree=0,
                namemax=MAX_NAME_LEN,
            )

    # ---- whole-file helpers (prefetch, tools) -------------------------------------------
    def resolve(self, path: bytes | str) -> int:
        """Inode of an absolute path inside the filesystem (symlinks not followed)."""
        if isinstance(path, str):
            path = os.fsencode(path)
        ino = self.root_ino
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            ino = self.lookup(ino, part).ino
        return ino
