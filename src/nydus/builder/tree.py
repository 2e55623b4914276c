"""The in-memory filesystem tree a build works on.

A `Node` is a directory entry; its `InodeData` may be shared by several nodes (hard
links of regular files). Regular files carry the list of `Chunk`s that hold their data,
which may live in this build's blob or in a blob of a parent layer.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from nydus.format.constants import file_type_of


@dataclass(frozen=True, slots=True)
class Chunk:
    """A stored chunk: identified by (blob_index, ci_index)."""

    digest: bytes
    blob_index: int
    ci_index: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed_offset: int
    compressed_size: int
    compressed: bool


@dataclass(slots=True, eq=False)
class InodeData:
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    rdev: int = 0  # Linux dev_t (os.makedev)
    size: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    symlink: bytes = b""
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def file_type(self) -> int:
        return file_type_of(self.mode)


@dataclass(slots=True, eq=False)
class Node:
    name: bytes
    inode: InodeData
    children: dict[bytes, Node] | None = None
    # a directory a tar layer implies (entries below it) without an entry of its own:
    # stacking it on a lower layer keeps the lower directory's attributes
    implicit: bool = False

    @classmethod
    def directory(cls, name: bytes, inode: InodeData) -> Node:
        return cls(name, inode, {})

    def sorted_children(self) -> list[Node]:
        assert self.children is not None
        return [self.children[k] for k in sorted(self.children)]

    def walk(self, prefix: bytes = b"") -> list[tuple[bytes, Node]]:
        """Every node below (and including) self with its path, parents first."""
        out = [(prefix or b"/", self)]
        stack = [(prefix, self)]
        while stack:
            path, node = stack.pop()
            if node.children is None:
                continue
            subdirs = []
            for child in node.sorted_children():
                p = path + b"/" + child.name
                out.append((p, child))
                if child.children is not None:
                    subdirs.append((p, child))
            stack.extend(reversed(subdirs))
        return out
