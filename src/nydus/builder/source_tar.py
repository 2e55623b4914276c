"""Read an OCI layer tar (plain or gzip, PAX/GNU/ustar) as a stream into `Node`s."""

from __future__ import annotations

import logging
import stat
import tarfile
from typing import BinaryIO

from nydus.builder.blob import BlobWriter
from nydus.builder.tree import InodeData, Node
from nydus.errors import BuildError
from nydus.format.constants import MAX_DEV_MAJOR, MAX_DEV_MINOR, MAX_NAME_LEN
from nydus.format.rafs import inode_range_error
from nydus.format.v6 import split_xattr_name

log = logging.getLogger(__name__)

_TYPE_MODE = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.AREGTYPE: stat.S_IFREG,
    tarfile.CONTTYPE: stat.S_IFREG,
    tarfile.GNUTYPE_SPARSE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def _fs(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _split(name: str, what: str) -> list[bytes]:
    raw = _fs(name)
    if raw.startswith(b"/"):
        raise BuildError(f"tar entry {what} {name!r} is an absolute path")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise BuildError(f"tar entry {what} {name!r} escapes the root with '..'")
    for p in parts:
        if b"\0" in p:
            raise BuildError(f"tar entry {what} {name!r} holds a NUL byte")
        if len(p) > MAX_NAME_LEN:
            raise BuildError(f"tar entry {name!r}: a name is longer than {MAX_NAME_LEN} bytes")
    return parts


def _mtime(info: tarfile.TarInfo) -> tuple[int, int]:
    raw = info.pax_headers.get("mtime")
    if raw:
        sec, _, frac = raw.partition(".")
        if sec.lstrip("-").isdigit() and (not frac or frac.isdigit()):
            if sec.startswith("-") and (sec + frac).strip("-0"):
                return -1, 0  # before 1970, however little: out of range
            return int(sec), int((frac + "000000000")[:9]) if frac else 0
        raise BuildError(f"tar entry {info.name!r}: PAX mtime {raw[:40]!r} is not a time")
    return int(info.mtime), 0


def _check_ranges(info: tarfile.TarInfo, mtime: int, nsec: int) -> None:
    """One clear error for header values an image cannot hold (negative, too large)."""
    size = info.size if info.isreg() else 0
    why = inode_range_error(info.uid, info.gid, mtime, nsec, size)
    if (
        why is None
        and (info.ischr() or info.isblk())
        and not (0 <= info.devmajor <= MAX_DEV_MAJOR and 0 <= info.devminor <= MAX_DEV_MINOR)
    ):
        why = (
            f"device {info.devmajor}:{info.devminor} is out of range "
            f"(major 0 to {MAX_DEV_MAJOR}, minor 0 to {MAX_DEV_MINOR})"
        )
    if why is not None:
        raise BuildError(f"tar entry {info.name!r}: {why}")


def _xattrs(info: tarfile.TarInfo) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            if value == "":  # an empty PAX record unsets the key (Go's archive/tar, umoci)
                continue
            name = _fs(key[len("SCHILY.xattr.") :])
            try:
                split_xattr_name(name)
            except Exception:  # noqa: BLE001 - any unsupported namespace: skip the xattr
                log.warning(
                    "skipping xattr %s of %s: namespace not supported by RAFS",
                    name.decode(errors="replace"),
                    info.name,
                )
                continue
            out[name] = _fs(value)
    return out


def read_tar_tree(stream: BinaryIO, writer: BlobWriter | None, label: str) -> Node:
    """Stream `stream` (never seeks) into a tree; data goes to `writer`."""
    root = Node.directory(b"", InodeData(mode=stat.S_IFDIR | 0o755))
    by_path: dict[tuple[bytes, ...], Node] = {(): root}
    try:
        tf = tarfile.open(  # noqa: SIM115 - closed in the finally below
            fileobj=stream, mode="r|*", encoding="utf-8", errors="surrogateescape"
        )
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BuildError(f"{label}: not a readable tar archive: {exc}") from exc
    try:
        for info in tf:
            _add_member(tf, info, root, by_path, writer)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BuildError(f"{label}: corrupt or truncated tar: {exc}") from exc
    finally:
        try:
            tf.close()
        except (tarfile.TarError, OSError, EOFError):
            pass
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
    tf: tarfile.TarFile,
    info: tarfile.TarInfo,
    root: Node,
    by_path: dict[tuple[bytes, ...], Node],
    writer: BlobWriter | None,
) -> None:
    parts = _split(info.name, "path")
    mtime, nsec = _mtime(info)
    _check_ranges(info, mtime, nsec)
    mode_bits = info.mode & 0o7777
    attrs = {
        "uid": info.uid,
        "gid": info.gid,
        "mtime": mtime,
        "mtime_nsec": nsec,
        "xattrs": _xattrs(info),
    }
    if not parts:  # the root itself
        if info.isdir():
            root.inode = InodeData(mode=stat.S_IFDIR | mode_bits, **attrs)  # type: ignore[arg-type]
        return
    parent = _parent(by_path, parts)
    name = parts[-1]
    key = tuple(parts)
    assert parent.children is not None
    if info.islnk():
        target_parts = _split(info.linkname, "hardlink target")
        target = by_path.get(tuple(target_parts))
        if target is None:
            raise BuildError(
                f"tar entry {info.name!r}: hardlink target {info.linkname!r} "
                "not found earlier in the layer"
            )
        if target.children is not None:
            raise BuildError(f"tar entry {info.name!r}: hardlink to a directory")
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
        raise BuildError(f"tar entry {info.name!r}: unsupported type {info.type!r}")
    data = InodeData(mode=ftype | mode_bits, **attrs)  # type: ignore[arg-type]
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
        import os

        data.rdev = os.makedev(info.devmajor, info.devminor)
    elif ftype == stat.S_IFLNK:
        data.symlink = _fs(info.linkname)
        if not data.symlink:
            raise BuildError(f"tar entry {info.name!r}: empty symlink target")
    elif ftype == stat.S_IFREG:
        data.size = info.size
        if info.size and writer is not None:
            f = tf.extractfile(info)
            assert f is not None
            data.chunks = writer.add_file(f.read, info.size)  # type: ignore[assignment]
    node = Node(name, data)
    parent.children[name] = node
    _drop_subtree(by_path, key)
    by_path[key] = node


def _drop_subtree(by_path: dict[tuple[bytes, ...], Node], key: tuple[bytes, ...]) -> None:
    if key in by_path and by_path[key].children:
        n = len(key)
        for k in [k for k in by_path if len(k) > n and k[:n] == key]:
            del by_path[k]
