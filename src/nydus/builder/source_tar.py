"""Read an OCI layer tar (plain or compressed, PAX/GNU/ustar) as a stream into `Node`s."""

from __future__ import annotations

import logging
import os
import stat
from typing import BinaryIO

from nydus.builder.blob import BlobWriter
from nydus.builder.tar_stream import TarEntry, TarError, TarStream, open_tar_stream
from nydus.builder.tree import InodeData, Node
from nydus.errors import BuildError
from nydus.format.constants import MAX_DEV_MAJOR, MAX_DEV_MINOR, MAX_NAME_LEN
from nydus.format.rafs import inode_range_error
from nydus.format.v6 import split_xattr_name

log = logging.getLogger(__name__)


_TYPE_MODE = {
    b"0": stat.S_IFREG,
    b"5": stat.S_IFDIR,
    b"2": stat.S_IFLNK,
    b"3": stat.S_IFCHR,
    b"4": stat.S_IFBLK,
    b"6": stat.S_IFIFO,
}


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _split(raw: bytes, what: str) -> list[bytes]:
    if raw.startswith(b"/"):
        raise BuildError(f"tar entry {what} {_show(raw)!r} is an absolute path")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise BuildError(f"tar entry {what} {_show(raw)!r} escapes the root with '..'")
    for p in parts:
        if b"\0" in p:
            raise BuildError(f"tar entry {what} {_show(raw)!r} holds a NUL byte")
        if len(p) > MAX_NAME_LEN:
            raise BuildError(
                f"tar entry {_show(raw)!r}: a name is longer than {MAX_NAME_LEN} bytes"
            )
    return parts


def _check_ranges(info: TarEntry) -> None:
    """One clear error for header values an image cannot hold (negative, too large)."""
    size = info.size if info.type == b"0" else 0
    why = inode_range_error(info.uid, info.gid, info.mtime, info.mtime_nsec, size)
    if (
        why is None
        and info.type in (b"3", b"4")
        and not (0 <= info.devmajor <= MAX_DEV_MAJOR and 0 <= info.devminor <= MAX_DEV_MINOR)
    ):
        why = (
            f"device {info.devmajor}:{info.devminor} is out of range "
            f"(major 0 to {MAX_DEV_MAJOR}, minor 0 to {MAX_DEV_MINOR})"
        )
    if why is not None:
        raise BuildError(f"tar entry {_show(info.name)!r}: {why}")


def _xattrs(entry: TarEntry) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in entry.xattrs.items():
        if value == b"":  # an empty PAX record unsets the key (Go's archive/tar, umoci)
            continue
        try:
            split_xattr_name(name)
        except Exception:  # noqa: BLE001 - any unsupported namespace: skip the xattr
            log.warning(
                "skipping xattr %s of %s: namespace not supported by RAFS",
                name.decode(errors="replace"),
                _show(entry.name),
            )
            continue
        out[name] = value
    return out


def read_tar_tree(stream: BinaryIO, writer: BlobWriter | None, label: str) -> Node:
    """Stream `stream` (never seeks; plain or compressed) into a tree; data goes to
    `writer`."""
    root = Node.directory(b"", InodeData(mode=stat.S_IFDIR | 0o755))
    by_path: dict[tuple[bytes, ...], Node] = {(): root}
    try:
        tar = open_tar_stream(stream)
        for entry in tar:
            _add_member(tar, entry, root, by_path, writer)
        tar.drain()  # to the end of a compressed stream: its trailer is checked there
    except TarError as exc:
        raise BuildError(f"{label}: corrupt or truncated tar: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise BuildError(f"{label}: cannot read the tar: {exc}") from exc
    return root


def _parent(by_path: dict[tuple[bytes, ...], Node], parts: list[bytes]) -> Node:
    node = by_path[()]
    for i, p in enumerate(parts[:-1]):
        key = tuple(parts[: i + 1])
        child = by_path.get(key)
        if child is None or child.children is None:
            child = Node.directory(p, InodeData(mode=stat.S_IFDIR | 0o755))
            child.implicit = True
            assert node.children is not None
            node.children[p] = child
            by_path[key] = child
        node = child
    return node


def _add_member(
    tar: TarStream,
    info: TarEntry,
    root: Node,
    by_path: dict[tuple[bytes, ...], Node],
    writer: BlobWriter | None,
) -> None:
    parts = _split(info.name, "path")
    _check_ranges(info)
    mode_bits = info.mode & 0o7777
    xattrs = _xattrs(info)
    if not parts:  # the root itself
        if info.type == b"5":
            root.inode = InodeData(
                stat.S_IFDIR | mode_bits,
                info.uid,
                info.gid,
                info.mtime,
                info.mtime_nsec,
                xattrs=xattrs,
            )
        return
    parent = _parent(by_path, parts)
    name = parts[-1]
    key = tuple(parts)
    assert parent.children is not None
    if info.type == b"1":
        target_parts = _split(info.linkname, "hardlink target")
        target = by_path.get(tuple(target_parts))
        if target is None:
            raise BuildError(
                f"tar entry {_show(info.name)!r}: hardlink target {_show(info.linkname)!r} "
                "not found earlier in the layer"
            )
        if target.children is not None:
            raise BuildError(f"tar entry {_show(info.name)!r}: hardlink to a directory")
        if target.inode.is_reg:
            data = target.inode
        else:  # hardlinks to symlinks/devices become separate inodes, as upstream does
            t = target.inode
            data = InodeData(
                t.mode,
                t.uid,
                t.gid,
                t.mtime,
                t.mtime_nsec,
                t.rdev,
                t.size,
                dict(t.xattrs),
                t.symlink,
            )
        node = Node(name, data)
        parent.children[name] = node
        by_path[key] = node
        return
    ftype = _TYPE_MODE.get(info.type)
    if ftype is None:
        raise BuildError(f"tar entry {_show(info.name)!r}: unsupported type {info.type!r}")
    data = InodeData(
        ftype | mode_bits, info.uid, info.gid, info.mtime, info.mtime_nsec, xattrs=xattrs
    )
    if ftype == stat.S_IFDIR:
        existing = by_path.get(key)
        if existing is not None and existing.children is not None:
            existing.inode = data
            existing.implicit = False
            return
        node = Node.directory(name, data)
        parent.children[name] = node
        _drop_subtree(by_path, key)
        by_path[key] = node
        return
    if ftype in (stat.S_IFCHR, stat.S_IFBLK):
        data.rdev = os.makedev(info.devmajor, info.devminor)
    elif ftype == stat.S_IFLNK:
        data.symlink = info.linkname
        if not data.symlink:
            raise BuildError(f"tar entry {_show(info.name)!r}: empty symlink target")
    elif ftype == stat.S_IFREG:
        data.size = info.size
        if info.size and writer is not None:
            data.chunks = writer.add_file(tar.read, info.size)  # type: ignore[assignment]
    node = Node(name, data)
    parent.children[name] = node
    _drop_subtree(by_path, key)
    by_path[key] = node


def _drop_subtree(by_path: dict[tuple[bytes, ...], Node], key: tuple[bytes, ...]) -> None:
    if key in by_path and by_path[key].children:
        n = len(key)
        for k in [k for k in by_path if len(k) > n and k[:n] == key]:
            del by_path[k]
