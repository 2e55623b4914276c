"""Snapshot a directory tree (metadata, xattrs, content digests) and compare two snapshots.

Paths are relative ``bytes`` (the root is ``b""``), so names that are not UTF-8 survive.
Nothing follows symlinks.  Hard-link sharing is compared as *groups of paths* with the same
``st_ino`` (inode numbers of two different filesystems are never compared directly).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Entry", "compare_trees", "hardlink_groups", "show", "snapshot_tree"]

_TYPES = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}


@dataclass(frozen=True)
class Entry:
    type: str  # reg, dir, lnk, chr, blk, fifo, sock
    mode: int  # permission bits incl. setuid/setgid/sticky (no type bits)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: tuple[int, int] | None  # (major, minor) for chr/blk
    nlink: int
    ino: int
    target: bytes | None = None  # symlink target
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    sha256: str | None = None  # regular files, when content was read


def show(path: bytes) -> str:
    """Printable form of a relative path (``/`` for the root, escapes for non-UTF-8 bytes)."""
    return "/" + path.decode("utf-8", "backslashreplace")


def _sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            buf = f.read(1 << 20)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def _xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:  # e.g. ENODATA for a name that vanished
            out[name] = f"<error {exc.errno}>".encode()
    return out


def _entry(path: bytes, st: os.stat_result, content: bool) -> Entry:
    kind = _TYPES.get(stat.S_IFMT(st.st_mode), "unknown")
    return Entry(
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
        nlink=st.st_nlink,
        ino=st.st_ino,
        target=os.readlink(path) if kind == "lnk" else None,
        xattrs=_xattrs(path),
        sha256=_sha256(path) if content and kind == "reg" else None,
    )


def snapshot_tree(
    root: str | bytes | os.PathLike[str], *, content: bool = True
) -> dict[bytes, Entry]:
    """Walk ``root`` with ``os.lstat`` on bytes paths and return ``{relative path: Entry}``.

    With ``content=False`` regular files are not opened (use it on a metadata-only mount, where
    reading file data fails).
    """
    broot = os.fsencode(root)
    out: dict[bytes, Entry] = {b"": _entry(broot, os.lstat(broot), content)}
    stack = [b""]
    while stack:
        rel = stack.pop()
        base = os.path.join(broot, rel) if rel else broot
        for name in sorted(os.listdir(base)):
            crel = os.path.join(rel, name) if rel else name
            cpath = os.path.join(broot, crel)
            st = os.lstat(cpath)
            out[crel] = _entry(cpath, st, content)
            if stat.S_ISDIR(st.st_mode):
                stack.append(crel)
    return dict(sorted(out.items()))


def hardlink_groups(
    snap: Mapping[bytes, Entry], types: Iterable[str] | None = None, paths: set[bytes] | None = None
) -> set[frozenset[bytes]]:
    """Groups (size >= 2) of paths sharing an inode number, among entries of ``types``."""
    wanted = set(types) if types is not None else None
    by_ino: dict[int, set[bytes]] = defaultdict(set)
    for path, e in snap.items():
        if e.type == "dir":
            continue
        if wanted is not None and e.type not in wanted:
            continue
        if paths is not None and path not in paths:
            continue
        by_ino[e.ino].add(path)
    return {frozenset(g) for g in by_ino.values() if len(g) > 1}


def _ignored(name: str, ignore_xattrs: Iterable[str]) -> bool:
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in ignore_xattrs)


def compare_trees(
    a: Mapping[bytes, Entry] | str | bytes | os.PathLike[str],
    b: Mapping[bytes, Entry] | str | bytes | os.PathLike[str],
    *,
    ignore_root_mtime: bool = True,
    check_content: bool = True,
    check_nlink: bool = False,
    check_xattrs: bool = True,
    ignore_xattrs: Iterable[str] = (),
    hardlink_types: Iterable[str] | None = None,
    ignore_fields: Iterable[str] = (),
    mode_mask: int = 0o7777,
    check_symlink_mode: bool = False,
    limit: int = 200,
) -> list[str]:
    """Differences between two trees (snapshots or directories), as readable strings.

    Compared per path: type, permission bits, uid, gid, size (not for directories), mtime in ns
    (the root's only with ``ignore_root_mtime=False``), rdev (devices), symlink target, xattrs
    (minus ``ignore_xattrs``; a trailing ``*`` makes a prefix), content digest (regular files,
    ``check_content``), nlink of non-directories (``check_nlink``).  Hard links are compared as
    groups of paths sharing an inode among entry types ``hardlink_types`` (default: all
    non-directories); ``"ino"`` in ``ignore_fields`` skips that.  ``ignore_fields`` names
    Entry fields to skip (e.g. ``{"mtime_ns"}``); ``mode_mask`` limits the permission bits
    compared (e.g. ``0o1777`` to ignore setuid/setgid).  Symlink permission bits are skipped
    unless ``check_symlink_mode``: Linux ignores them and creates every symlink 0777, while a
    tar header may record anything (upstream's tar builder keeps the header's bits).
    An empty list means the trees are equal.
    """
    sa = a if isinstance(a, Mapping) else snapshot_tree(a, content=check_content)
    sb = b if isinstance(b, Mapping) else snapshot_tree(b, content=check_content)
    skip = set(ignore_fields)
    ignore_x = tuple(ignore_xattrs)
    diffs: list[str] = []

    for path in sorted(set(sa) | set(sb)):
        if path not in sb:
            diffs.append(f"{show(path)}: only in a ({sa[path].type})")
            continue
        if path not in sa:
            diffs.append(f"{show(path)}: only in b ({sb[path].type})")
            continue
        ea, eb = sa[path], sb[path]
        if ea.type != eb.type:
            diffs.append(f"{show(path)}: type {ea.type} != {eb.type}")
            continue
        checks: list[tuple[str, object, object]] = [
            ("uid", ea.uid, eb.uid),
            ("gid", ea.gid, eb.gid),
        ]
        if ea.type != "lnk" or check_symlink_mode:
            checks.insert(0, ("mode", oct(ea.mode & mode_mask), oct(eb.mode & mode_mask)))
        if ea.type != "dir":
            checks.append(("size", ea.size, eb.size))
        if not (path == b"" and ignore_root_mtime):
            checks.append(("mtime_ns", ea.mtime_ns, eb.mtime_ns))
        if ea.type in ("chr", "blk"):
            checks.append(("rdev", ea.rdev, eb.rdev))
        if ea.type == "lnk":
            checks.append(("target", ea.target, eb.target))
        if check_nlink and ea.type != "dir":
            checks.append(("nlink", ea.nlink, eb.nlink))
        if check_xattrs:
            xa = {k: v for k, v in ea.xattrs.items() if not _ignored(k, ignore_x)}
            xb = {k: v for k, v in eb.xattrs.items() if not _ignored(k, ignore_x)}
            checks.append(("xattrs", xa, xb))
        if check_content and ea.type == "reg":
            if ea.sha256 is None or eb.sha256 is None:
                diffs.append(f"{show(path)}: content not captured in a snapshot")
            else:
                checks.append(("sha256", ea.sha256, eb.sha256))
        for name, va, vb in checks:
            if name in skip:
                continue
            if va != vb:
                diffs.append(f"{show(path)}: {name} {va!r} != {vb!r}")

    common = set(sa) & set(sb)
    if "ino" not in skip:
        ga = hardlink_groups(sa, hardlink_types, common)
        gb = hardlink_groups(sb, hardlink_types, common)
        for g in sorted(ga - gb, key=sorted):
            diffs.append("hard link group only in a: " + ", ".join(show(p) for p in sorted(g)))
        for g in sorted(gb - ga, key=sorted):
            diffs.append("hard link group only in b: " + ", ".join(show(p) for p in sorted(g)))
    if len(diffs) > limit:
        diffs = diffs[:limit] + [f"... and {len(diffs) - limit} more differences"]
    return diffs
