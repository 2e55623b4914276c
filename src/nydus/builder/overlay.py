"""Layer stacking: whiteouts (OCI `.wh.` / overlayfs char 0:0 + opaque xattr) applied
to a lower tree, and loading a bootstrap back into a `Node` tree (parent layers, merge)."""

from __future__ import annotations

import stat

from nydus.builder.tree import Chunk, InodeData, Node
from nydus.errors import BuildError
from nydus.format.rafs import ChunkRef, RafsSuper

OCI_WHITEOUT_PREFIX = b".wh."
OCI_OPAQUE = b".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = b"trusted.overlay.opaque"
SPECS = ("oci", "overlayfs", "none")


class BadWhiteout(BuildError):
    """An OCI whiteout entry whose target names no sibling (empty, `.`, `..`, with `/`)."""


def oci_whiteout_target(name: bytes) -> bytes | None:
    """The sibling an OCI whiteout entry `.wh.NAME` removes; None for a plain name or the
    opaque marker. A target that is empty, `.`, `..` or holds a `/` would reach outside
    the directory: `BadWhiteout`."""
    if name == OCI_OPAQUE or not name.startswith(OCI_WHITEOUT_PREFIX):
        return None
    target = name[len(OCI_WHITEOUT_PREFIX) :]
    if target in (b"", b".", b"..") or b"/" in target or b"\0" in target:
        raise BadWhiteout(
            f"invalid whiteout entry {name.decode('utf-8', 'backslashreplace')!r}: "
            "its target is not a name in the directory"
        )
    return target


def _is_overlay_whiteout(node: Node) -> bool:
    d = node.inode
    return stat.S_ISCHR(d.mode) and d.rdev == 0


def _whiteout_target(name: bytes, node: Node, spec: str) -> bytes | None:
    """The lower name removed by this entry, or None if it is no removal whiteout."""
    if spec == "oci":
        return oci_whiteout_target(name)
    if spec == "overlayfs" and _is_overlay_whiteout(node):
        return name
    return None


def _is_opaque_marker(name: bytes, spec: str) -> bool:
    return spec == "oci" and name == OCI_OPAQUE


def strip_whiteouts(node: Node, spec: str) -> None:
    """Drop whiteout entries of a layer that has nothing below it."""
    if spec == "none" or node.children is None:
        return
    for _path, n in node.walk():
        if n.children is None:
            continue
        if spec == "overlayfs":
            n.inode.xattrs.pop(OVERLAY_OPAQUE_XATTR, None)
        for name in list(n.children):
            child = n.children[name]
            if _whiteout_target(name, child, spec) is not None or _is_opaque_marker(name, spec):
                del n.children[name]


def apply_layer(lower: Node, upper: Node, spec: str) -> Node:
    """Overlay `upper` onto `lower` in place (lower is modified and returned)."""
    if spec not in SPECS:
        raise BuildError(f"unknown whiteout spec {spec!r}")
    _merge_dir(lower, upper, spec)
    return lower


def _merge_dir(lower: Node, upper: Node, spec: str) -> None:
    assert lower.children is not None and upper.children is not None
    opaque = False
    if spec != "none":
        for name, child in upper.children.items():
            target = _whiteout_target(name, child, spec)
            if target is not None:
                lower.children.pop(target, None)
            elif _is_opaque_marker(name, spec):
                opaque = True
        if spec == "overlayfs" and upper.inode.xattrs.get(OVERLAY_OPAQUE_XATTR) == b"y":
            opaque = True
        if spec == "overlayfs":
            upper.inode.xattrs.pop(OVERLAY_OPAQUE_XATTR, None)
    if opaque:
        lower.children.clear()
    if not upper.implicit:
        lower.inode = upper.inode
    for name in sorted(upper.children):
        child = upper.children[name]
        if spec != "none" and (
            _whiteout_target(name, child, spec) is not None or _is_opaque_marker(name, spec)
        ):
            continue
        existing = lower.children.get(name)
        if existing is not None and existing.children is not None and child.children is not None:
            _merge_dir(existing, child, spec)
            continue
        if child.children is not None:
            strip_whiteouts(child, spec)
        lower.children[name] = child


def load_tree(sb: RafsSuper, blob_map: list[int] | None = None) -> Node:
    """Rebuild a `Node` tree from a bootstrap; chunk blob indexes are mapped through
    `blob_map` (identity when None)."""
    inodes: dict[int, InodeData] = {}
    chunk_cache: dict[tuple[int, int], Chunk] = {}

    def inode_of(ino: int) -> InodeData:
        a = sb.attr(ino)
        if a.is_reg and ino in inodes:
            return inodes[ino]
        data = InodeData(
            mode=a.mode,
            uid=a.uid,
            gid=a.gid,
            mtime=a.mtime,
            mtime_nsec=a.mtime_nsec,
            rdev=a.rdev,
            size=a.size,
            xattrs=sb.xattrs(ino),
        )
        if a.is_symlink:
            data.symlink = sb.readlink(ino)
        elif a.is_reg and a.size:
            data.chunks = [_chunk(sb, ref, blob_map, chunk_cache) for ref in sb.chunks(ino)]
        if a.is_reg:
            inodes[ino] = data
        return data

    root = Node.directory(b"", inode_of(sb.root_ino))
    stack = [(sb.root_ino, root)]
    while stack:
        ino, node = stack.pop()
        assert node.children is not None
        for ent in sb.readdir(ino):
            a = sb.attr(ent.ino)
            if a.is_dir:
                child = Node.directory(ent.name, inode_of(ent.ino))
                stack.append((ent.ino, child))
            else:
                child = Node(ent.name, inode_of(ent.ino))
            node.children[ent.name] = child
    return root


def _chunk(
    sb: RafsSuper, ref: ChunkRef, blob_map: list[int] | None, cache: dict[tuple[int, int], Chunk]
) -> Chunk:
    key = (ref.blob_index, ref.ci_index)
    hit = cache.get(key)
    if hit is not None:
        return hit
    if ref.digest is None or ref.uncompressed_size is None:
        raise BuildError(
            "bootstrap lacks a chunk table entry for blob "
            f"{ref.blob_index} chunk {ref.ci_index}; cannot reuse it"
        )
    blob = blob_map[ref.blob_index] if blob_map is not None else ref.blob_index
    c = Chunk(
        ref.digest,
        blob,
        ref.ci_index,
        ref.uncompressed_offset,
        ref.uncompressed_size,
        ref.compressed_offset or 0,
        ref.compressed_size or 0,
        bool(ref.compressed),
    )
    cache[key] = c
    return c
