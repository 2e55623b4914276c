"""Several RAFS filesystems under one mount (nydusd's API mounts, the snapshotter's shared
daemon mode): a read-only pseudo root whose entries `/<name>` are the roots of the attached
instances, each a `RafsFs` with its own config, backend and metrics.

Inode numbers are namespaced per instance: `slot << SLOT_SHIFT | local inode`, the pseudo root
is inode 1 (slot 0). Slots are never reused, so an inode the kernel still caches from a
detached instance cannot name a file of a later one: it answers ESTALE.

Same operation set as `RafsFs`, so the FUSE layer serves either.
"""

from __future__ import annotations

import errno
import itertools
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from nydus.errors import NotFound
from nydus.format.rafs import Attr
from nydus.fs.core import DirItem, FsError, RafsFs, StatFs
from nydus.fs.metrics import FsMetrics

__all__ = ["ROOT_INO", "MultiFs"]

ROOT_INO = 1
SLOT_SHIFT = 48
LOCAL_MASK = (1 << SLOT_SHIFT) - 1


class MultiFs:
    def __init__(self, uid: int = 0, gid: int = 0) -> None:
        self.root_ino = ROOT_INO
        self.metrics = FsMetrics("/", False, False, False)
        self._lock = threading.Lock()
        self._by_name: dict[bytes, int] = {}  # name -> slot
        self._slots: dict[int, tuple[bytes, RafsFs]] = {}
        self._next_slot = 1
        self._mtime = int(time.time())
        self._uid, self._gid = uid, gid

    # -- instances -----------------------------------------------------------------------

    def add(self, name: str, fs: RafsFs) -> None:
        """Attach `fs` at `/<name>` (one path component)."""
        key = name.strip("/").encode()
        if not key or b"/" in key or key in (b".", b".."):
            raise FsError(errno.EINVAL, f"mountpoint /{name.strip('/')} must be one path component")
        with self._lock:
            if key in self._by_name:
                raise FsError(errno.EEXIST, f"/{name.strip('/')} is already mounted")
            slot = self._next_slot
            self._next_slot += 1
            self._by_name[key] = slot
            self._slots[slot] = (key, fs)
            self._mtime = int(time.time())

    def remove(self, name: str) -> RafsFs:
        key = name.strip("/").encode()
        with self._lock:
            slot = self._by_name.pop(key, None)
            if slot is None:
                raise NotFound(f"/{name.strip('/')} is not mounted")
            _, fs = self._slots.pop(slot)
            self._mtime = int(time.time())
            return fs

    def instances(self) -> dict[str, RafsFs]:
        with self._lock:
            return {"/" + k.decode(errors="replace"): fs for k, fs in self._slots.values()}

    # -- inode mapping -------------------------------------------------------------------

    def _split(self, ino: int) -> tuple[int, RafsFs | None, int]:
        """(slot, instance, local inode); instance None for the pseudo root."""
        if ino == ROOT_INO:
            return 0, None, ROOT_INO
        slot = ino >> SLOT_SHIFT
        with self._lock:
            entry = self._slots.get(slot)
        if entry is None:
            raise FsError(errno.ESTALE, f"inode {ino} belongs to an instance no longer mounted")
        return slot, entry[1], ino & LOCAL_MASK

    @staticmethod
    def _map(slot: int, a: Attr) -> Attr:
        return replace(a, ino=(slot << SLOT_SHIFT) | a.ino)

    def _root_attr(self) -> Attr:
        with self._lock:
            n = len(self._slots)
        return Attr(ROOT_INO, stat.S_IFDIR | 0o755, 0, self._uid, self._gid, self._mtime, 0, 2 + n)

    def volatile(self, ino: int) -> bool:
        """Whether the entries of directory `ino` come and go (the pseudo root): the FUSE layer
        must not let the kernel cache them, present or absent."""
        return ino == ROOT_INO

    # -- operations ----------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        slot, fs, local = self._split(ino)
        if fs is None:
            return self._root_attr()
        return self._map(slot, fs.getattr(local))

    def lookup(self, parent: int, name: bytes) -> Attr:
        slot, fs, local = self._split(parent)
        if fs is None:
            if name in (b".", b".."):
                return self._root_attr()
            with self._lock:
                child = self._by_name.get(name)
                entry = self._slots.get(child) if child is not None else None
            if entry is None:
                raise NotFound(f"{name!r} is not mounted")
            return self._map(child or 0, entry[1].getattr(entry[1].root_ino))
        if name == b".." and local == fs.root_ino:
            return self._root_attr()
        return self._map(slot, fs.lookup(local, name))

    def opendir(self, ino: int) -> None:
        _, fs, local = self._split(ino)
        if fs is not None:
            fs.opendir(local)

    def readdir(
        self, ino: int, offset: int = 0, plus: bool = False, limit: int | None = None
    ) -> list[DirItem]:
        return list(itertools.islice(self.iter_dir(ino, offset), limit))

    def iter_dir(self, ino: int, offset: int = 0) -> Iterator[DirItem]:
        slot, fs, local = self._split(ino)
        if fs is not None:
            at_root = local == fs.root_ino
            for item in fs.iter_dir(local, offset):
                if at_root and item.name == b"..":
                    yield DirItem(b"..", self._root_attr(), item.next_offset)
                else:
                    yield DirItem(item.name, self._map(slot, item.attr), item.next_offset)
            return
        root = self._root_attr()
        if offset <= 0:
            yield DirItem(b".", root, 1)
        if offset <= 1:
            yield DirItem(b"..", root, 2)
        with self._lock:
            # offsets are slot numbers + 2: stable while instances come and go
            entries = sorted((s, k, f) for s, (k, f) in self._slots.items() if s + 2 >= offset)
        for s, name, child in entries:
            try:
                a = child.getattr(child.root_ino)
            except FsError:
                continue
            yield DirItem(name, self._map(s, a), s + 3)

    def open(self, ino: int) -> Attr:
        slot, fs, local = self._split(ino)
        if fs is None:
            raise FsError(errno.EISDIR, "the pseudo root is a directory")
        return self._map(slot, fs.open(local))

    def release(self, ino: int) -> None:
        try:
            _, fs, local = self._split(ino)
        except FsError:
            return  # released after its instance went away
        if fs is not None:
            fs.release(local)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        _, fs, local = self._split(ino)
        if fs is None:
            raise FsError(errno.EISDIR, "the pseudo root is a directory")
        return fs.read(local, offset, size)

    def read_cached(self, ino: int, offset: int, size: int) -> bytes | None:
        try:
            _, fs, local = self._split(ino)
        except FsError:
            return None
        return None if fs is None else fs.read_cached(local, offset, size)

    def readlink(self, ino: int) -> bytes:
        _, fs, local = self._split(ino)
        if fs is None:
            raise FsError(errno.EINVAL, "the pseudo root is not a symlink")
        return fs.readlink(local)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        _, fs, local = self._split(ino)
        if fs is None:
            raise FsError(errno.ENODATA, f"the pseudo root has no xattr {name!r}")
        return fs.getxattr(local, name)

    def listxattr(self, ino: int) -> list[bytes]:
        _, fs, local = self._split(ino)
        return [] if fs is None else fs.listxattr(local)

    def access(self, ino: int, mode: int) -> None:
        _, fs, local = self._split(ino)
        if fs is not None:
            fs.access(local, mode)

    def statfs(self) -> StatFs:
        with self._lock:
            fss = [f for _, f in self._slots.values()]
        parts = [f.statfs() for f in fss]
        return StatFs(
            bsize=4096,
            frsize=4096,
            blocks=sum(p.blocks for p in parts),
            bfree=0,
            bavail=0,
            files=1 + sum(p.files for p in parts),
            ffree=0,
            namemax=255,
        )
