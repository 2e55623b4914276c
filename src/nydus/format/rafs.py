"""The version-independent view of a RAFS bootstrap that the builder (parent layers,
merge, check, inspect) and the filesystem core use: `open_bootstrap(buf)` sniffs v5/v6.

Inode numbers are the ones a mount presents: the nid for v6, the v5 `i_ino`.
"""

from __future__ import annotations

import bisect
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from nydus.errors import FormatError
from nydus.format.constants import (
    EROFS_MAGIC,
    EROFS_SUPER_OFFSET,
    MAX_FILE_SIZE,
    MAX_ID,
    MAX_MTIME,
    MAX_NSEC,
    RAFS_V5_MAGIC,
    RAFS_V5_VERSION,
    SuperFlags,
)
from nydus.format.v6 import BlobInfo, ChunkInfo, erofs_to_rdev
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester


@dataclass(frozen=True, slots=True)
class Attr:
    """What stat() of an entry shows."""

    ino: int
    mode: int
    size: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int
    rdev: int = 0  # Linux dev_t as os.makedev gives it

    @classmethod
    def of_record(
        cls,
        ino: int,
        mode: int,
        size: int,
        uid: int,
        gid: int,
        mtime: int,
        mtime_nsec: int,
        nlink: int,
        raw_rdev: int,
    ) -> Attr:
        """The attributes an inode record stores; `raw_rdev` is its EROFS-encoded device
        number, used for character and block devices only."""
        rdev = erofs_to_rdev(raw_rdev) if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0
        return cls(ino, mode, size, uid, gid, mtime, mtime_nsec, nlink, rdev)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    ino: int
    file_type: int  # a FileType (as the directory stores it)


@dataclass(frozen=True, slots=True)
class DirIndex:
    """A directory's entries in name order, as the readers cache them: `names` and `inos`
    are parallel (a lookup is one bisect), `children` is what readdir lists (no `.`, `..`)."""

    names: tuple[bytes, ...]
    inos: tuple[int, ...]
    children: tuple[DirEntry, ...]

    @classmethod
    def of(cls, entries: Sequence[tuple[bytes, int, int]]) -> DirIndex | None:
        """The index of (name, ino, FileType) entries; None unless they are strictly sorted
        (out of order, or a name twice)."""
        names = [e[0] for e in entries]
        if names != sorted(names) or len(set(names)) != len(names):
            return None
        children = [DirEntry(n, i, t) for n, i, t in entries if n != b"." and n != b".."]
        return cls(tuple(names), tuple([e[1] for e in entries]), tuple(children))

    def find(self, name: bytes) -> int | None:
        """Inode number of the entry called `name`, or None."""
        names = self.names
        i = bisect.bisect_left(names, name)
        if i < len(names) and names[i] == name:
            return self.inos[i]
        return None


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One filesystem chunk of a regular file, in file order.

    For v6 the location fields come from the bootstrap's chunk table (None when the
    bootstrap has none); the blob's CI array is authoritative for reading data.
    """

    blob_index: int
    ci_index: int
    file_offset: int
    uncompressed_offset: int
    uncompressed_size: int | None = None
    compressed_offset: int | None = None
    compressed_size: int | None = None
    compressed: bool | None = None
    digest: bytes | None = None


class RafsSuper(Protocol):
    version: int
    flags: SuperFlags
    chunk_size: int
    compressor: Compressor
    digester: Digester
    blobs: list[BlobInfo]
    root_ino: int
    inode_count: int

    def attr(self, ino: int) -> Attr: ...
    def readdir(self, ino: int) -> list[DirEntry]: ...
    def lookup(self, parent: int, name: bytes) -> int | None: ...
    def parent(self, ino: int) -> int:
        """Inode number of the directory holding directory `ino` (the root's is the root)."""
        ...

    def readlink(self, ino: int) -> bytes: ...
    def xattrs(self, ino: int) -> dict[bytes, bytes]: ...
    def chunks(self, ino: int) -> list[ChunkRef]: ...
    def chunk_table(self) -> list[ChunkInfo]: ...
    def prefetch_inos(self) -> list[int]: ...


def inode_range_error(uid: int, gid: int, mtime: int, mtime_nsec: int, size: int) -> str | None:
    """Which of these inode fields RAFS cannot store or the kernel cannot show (the
    `MAX_*` ranges of `constants`), as a phrase; None when all are in range."""
    for name, value, top in (
        ("uid", uid, MAX_ID),
        ("gid", gid, MAX_ID),
        ("mtime", mtime, MAX_MTIME),
        ("mtime nanoseconds", mtime_nsec, MAX_NSEC),
        ("size", size, MAX_FILE_SIZE),
    ):
        if not 0 <= value <= top:
            return f"{name} {value} is out of range (0 to {top})"
    return None


def flags_compressor(flags: int) -> Compressor:
    if flags & SuperFlags.COMPRESSION_NONE:
        return Compressor.NONE
    if flags & SuperFlags.COMPRESSION_ZSTD:
        return Compressor.ZSTD
    if flags & SuperFlags.COMPRESSION_GZIP:
        return Compressor.GZIP
    return Compressor.LZ4_BLOCK


def flags_digester(flags: int) -> Digester:
    return Digester.SHA256 if flags & SuperFlags.HASH_SHA256 else Digester.BLAKE3


def detect_version(buf: bytes | memoryview) -> int:
    if len(buf) >= 8:
        magic, version = struct.unpack_from("<II", buf, 0)
        if magic == RAFS_V5_MAGIC and version == RAFS_V5_VERSION:
            return 5
    if (
        len(buf) >= EROFS_SUPER_OFFSET + 4
        and struct.unpack_from("<I", buf, EROFS_SUPER_OFFSET)[0] == EROFS_MAGIC
    ):
        return 6
    raise FormatError("not a RAFS bootstrap: neither RAFS v5 nor v6 (EROFS) magic found")


def open_bootstrap(buf: bytes | memoryview) -> RafsSuper:
    """Parse a bootstrap held in memory (bytes or an mmap) and validate its superblocks."""
    if detect_version(buf) == 5:
        from nydus.format.v5reader import RafsV5Super

        return RafsV5Super(buf)
    from nydus.format.v6reader import RafsV6Super

    return RafsV6Super(buf)


def walk(
    sb: RafsSuper, ino: int | None = None, prefix: bytes = b"/"
) -> Iterator[tuple[bytes, int]]:
    """Yield (path, ino) for every entry, parents before children, children sorted.

    A directory met twice (a cycle, or a directory linked in two places) is a FormatError:
    a tree holds every directory once."""
    ino = sb.root_ino if ino is None else ino
    yield prefix, ino
    stack = [(prefix, ino)]
    dirs = {ino}
    while stack:
        path, dino = stack.pop()
        children = sb.readdir(dino)
        subdirs = []
        for ent in children:
            child = path.rstrip(b"/") + b"/" + ent.name
            if sb.attr(ent.ino).is_dir:
                if ent.ino in dirs:
                    raise FormatError(
                        f"{child.decode('utf-8', 'backslashreplace')}: directory inode "
                        f"{ent.ino} is met twice (a directory cycle or a linked directory)"
                    )
                dirs.add(ent.ino)
                subdirs.append((child, ent.ino))
            yield child, ent.ino
        stack.extend(reversed(subdirs))
