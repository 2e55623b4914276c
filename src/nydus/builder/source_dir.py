"""Read a directory tree into `Node`s, streaming regular file data into a BlobWriter."""

from __future__ import annotations

import errno
import logging
import os
import stat

from nydus.builder.blob import BlobWriter
from nydus.builder.tree import InodeData, Node
from nydus.errors import BuildError
from nydus.format.constants import MAX_NAME_LEN
from nydus.format.rafs import inode_range_error
from nydus.format.v6 import split_xattr_name

log = logging.getLogger(__name__)


def read_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in sorted(names):
        raw = os.fsencode(name)
        try:
            split_xattr_name(raw)
        except Exception:  # noqa: BLE001 - any unsupported namespace: skip the xattr
            log.warning(
                "skipping xattr %s of %s: namespace not supported by RAFS", name, os.fsdecode(path)
            )
            continue
        try:
            out[raw] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue
            raise
    return out


def inode_from_stat(st: os.stat_result, xattrs: dict[bytes, bytes], path: bytes) -> InodeData:
    mtime = st.st_mtime_ns // 1_000_000_000
    why = inode_range_error(st.st_uid, st.st_gid, mtime, 0, st.st_size)
    if why is not None:
        raise BuildError(f"{os.fsdecode(path)}: {why}")
    return InodeData(
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns // 1_000_000_000,
        mtime_nsec=st.st_mtime_ns % 1_000_000_000,
        rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
        xattrs=xattrs,
    )


def read_dir_tree(source: str | bytes, writer: BlobWriter | None) -> Node:
    """Build the tree of `source`; file data goes to `writer` (None: metadata only)."""
    top = os.fsencode(source)
    try:
        st = os.lstat(top)
    except OSError as exc:
        raise BuildError(f"source {os.fsdecode(top)}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"source {os.fsdecode(top)} is not a directory")
    root = Node.directory(b"", inode_from_stat(st, _xattrs(top), top))
    links: dict[tuple[int, int], InodeData] = {}
    stack = [(top, root)]
    while stack:
        path, node = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise BuildError(f"cannot read directory {os.fsdecode(path)}: {exc.strerror}") from exc
        for ent in entries:
            name = ent.name
            if len(name) > MAX_NAME_LEN:
                raise BuildError(
                    f"file name longer than {MAX_NAME_LEN} bytes: {os.fsdecode(ent.path)}"
                )
            p = ent.path
            try:
                st = os.lstat(p)
            except OSError as exc:
                raise BuildError(f"cannot stat {os.fsdecode(p)}: {exc.strerror}") from exc
            assert node.children is not None
            if stat.S_ISDIR(st.st_mode):
                child = Node.directory(name, inode_from_stat(st, _xattrs(p), p))
                node.children[name] = child
                stack.append((p, child))
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                shared = links.get((st.st_dev, st.st_ino))
                if shared is not None:
                    node.children[name] = Node(name, shared)
                    continue
            data = inode_from_stat(st, _xattrs(p), p)
            if stat.S_ISLNK(st.st_mode):
                data.symlink = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                data.size = st.st_size
                _add_file(writer, p, data)
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = data
            node.children[name] = Node(name, data)
    return root


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        return read_xattrs(path)
    except OSError as exc:
        raise BuildError(f"cannot read xattrs of {os.fsdecode(path)}: {exc.strerror}") from exc


def _add_file(writer: BlobWriter | None, path: bytes, data: InodeData) -> None:
    if data.size == 0 or writer is None:
        return
    data.chunks = writer.add_path(path, data.size)  # type: ignore[assignment]
