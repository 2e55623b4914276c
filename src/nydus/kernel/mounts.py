"""Mounts as the kernel lists them (/proc/self/mountinfo), mount(2) and unmounting them,
and removing dead FUSE mounts.

Paths are compared after `os.path.abspath` only: resolving symlinks would stat the mount,
and a FUSE mount whose daemon is starting, stopped or dead may block or fail such a stat.
mountinfo is read instead, which works for all of them. Where several filesystems are
stacked on one mountpoint, the last listed is the topmost (the one a path lookup sees).

A FUSE mount whose daemon died answers every access with ENOTCONN but stays mounted;
`clear_dead_mounts(path)` lazily unmounts such mounts from the top of `path` until a live
mount or the plain directory shows, so a restarted daemon never stacks on a dead one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from nydus.errors import NydusError

__all__ = [
    "MS_NOATIME",
    "MS_NODEV",
    "MS_NOSUID",
    "MS_RDONLY",
    "Mount",
    "MountError",
    "clear_dead_mounts",
    "find_mount",
    "is_dead",
    "is_mounted",
    "mount",
    "mount_device",
    "mountpoints_under",
    "mounts",
    "mounts_at",
    "parse_mountinfo",
    "unescape",
    "unmount",
    "unmount_all",
]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

#: mount(2) flags (<sys/mount.h>)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOATIME = 1024
#: umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
#: errnos of a mount whose filesystem server is gone
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)

_ESCAPE = re.compile(rb"\\([0-7]{3})")


class MountError(NydusError):
    """A mount table that cannot be read, or a mount that cannot be removed."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo (proc(5)), fields unescaped."""

    mount_id: int
    parent_id: int
    device: str  # "major:minor" of the filesystem (st_dev of its files)
    root: str  # the directory of the filesystem mounted here (not "/" for bind mounts)
    mountpoint: str
    options: str  # per-mount options (ro, nosuid...)
    fstype: str  # "fuse", "erofs", "overlay"...; FUSE gives "fuse" or "fuse.<subtype>"
    source: str  # fsname (nydusfs), device (/dev/loop3) or "none"
    super_options: str  # per-superblock options

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith(("fuse.", "fuseblk"))


def unescape(raw: bytes) -> str:
    """A mountinfo field: the kernel writes space, tab, newline and backslash as `\\ooo`."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes((int(m[1], 8),)), raw))


def parse_mountinfo(data: bytes) -> list[Mount]:
    """Every mount of a mountinfo text, in the kernel's order; MountError on a bad line."""
    out = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)  # optional fields (shared:N...) end with "-"
            out.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2].decode(),
                    root=unescape(fields[3]),
                    mountpoint=unescape(fields[4]),
                    options=fields[5].decode(),
                    fstype=unescape(fields[sep + 1]),
                    source=unescape(fields[sep + 2]),
                    super_options=unescape(fields[sep + 3]) if len(fields) > sep + 3 else "",
                )
            )
        except (ValueError, IndexError, UnicodeDecodeError):
            raise MountError(f"mountinfo line {n} is malformed: {line[:200]!r}") from None
    return out


def mounts(pid: int | str = "self") -> list[Mount]:
    """The mounts visible to process `pid` (this one by default)."""
    path = f"/proc/{pid}/mountinfo"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise MountError(f"cannot read {path}: {exc.strerror}", exc.errno or errno.EIO) from exc
    return parse_mountinfo(data)


def find_mount(path: StrPath) -> Mount | None:
    """The topmost mount at `path`, or None when `path` is not a mountpoint."""
    target = os.path.abspath(path)
    found = None
    for m in mounts():
        if m.mountpoint == target:
            found = m  # the last listed is on top
    return found


def mounts_at(path: StrPath) -> list[Mount]:
    """Every mount stacked at `path`, bottom first (the last one is what `path` shows)."""
    target = os.path.abspath(path)
    return [m for m in mounts() if m.mountpoint == target]


def is_mounted(path: StrPath) -> bool:
    """True when something is mounted at `path` (a dead FUSE mount included)."""
    return find_mount(path) is not None


def mountpoints_under(path: StrPath) -> list[str]:
    """Mount points at or below `path` (each once), deepest first: the order to unmount in."""
    top = os.path.abspath(path)
    inside = {m.mountpoint for m in mounts()}
    found = [p for p in inside if p == top or p.startswith(top.rstrip("/") + "/")]
    return sorted(found, key=len, reverse=True)


def mount_device(path: StrPath) -> str | None:
    """`major:minor` of the topmost filesystem mounted at `path`, or None."""
    m = find_mount(path)
    return m.device if m is not None else None


_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        import ctypes  # on first use: a daemon's start pays for what it calls

        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc = lib
    return _libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _umount2(target: str, flags: int) -> int:
    """umount2(2); 0 or the errno."""
    if _lib().umount2(os.fsencode(target), flags) == 0:
        return 0
    return _errno()


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2); MountError naming source, target and the kernel's reason otherwise."""
    raw = os.fsencode(data) if data else None
    if raw is not None and len(raw) >= 4096:
        raise MountError(
            f"mount options for {target} are {len(raw)} bytes (the kernel takes < 4096)",
            errno.E2BIG,
        )
    rc = _lib().mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags, raw)
    if rc != 0:
        err = _errno()
        raise MountError(f"mount -t {fstype} {source} {target}: {os.strerror(err)}", err)


def _fusermount(target: str, lazy: bool) -> bool:
    """fusermount3 (setuid) unmounts a user's own FUSE mount without privileges."""
    import shutil
    import subprocess

    for tool in ("fusermount3", "fusermount"):
        exe = shutil.which(tool)
        if exe is None:
            continue
        cmd = [exe, "-u", *(["-z"] if lazy else []), target]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return True
    return False


def unmount(path: StrPath, *, lazy: bool = False, force: bool = False) -> None:
    """Unmount the topmost mount at `path`; MountError (with the errno) when it stays.

    `lazy` detaches it now and lets the kernel finish once nothing uses it (MNT_DETACH);
    `force` aborts pending requests (MNT_FORCE; for FUSE, the connection). Without the
    privilege to unmount, a FUSE mount of this user goes through fusermount3.
    """
    target = os.path.abspath(path)
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0) | (MNT_FORCE if force else 0)
    err = _umount2(target, flags)
    if err == 0:
        log.debug("unmounted %s%s", target, " (lazy)" if lazy else "")
        return
    if err == errno.EPERM:
        m = find_mount(target)
        if m is not None and m.is_fuse and _fusermount(target, lazy):
            log.debug("unmounted %s with fusermount", target)
            return
    raise MountError(f"cannot unmount {target}: {os.strerror(err)}", err)


def unmount_all(path: StrPath, attempts: int = 8) -> bool:
    """Clear `path` of every mount stacked on it (stale ones included): a plain unmount,
    else a lazy one (busy). Returns whether `path` is no longer a mountpoint."""
    for _ in range(attempts):
        if not is_mounted(path):
            return True
        try:
            unmount(path)
        except MountError:
            try:
                unmount(path, lazy=True)
            except MountError as exc:
                log.debug("%s", exc)
                break
    if is_mounted(path):
        log.warning("could not unmount %s", os.path.abspath(path))
        return False
    return True


def is_dead(path: StrPath) -> bool:
    """Whether `path` answers ENOTCONN: a FUSE mount whose daemon is gone. Asked with
    statfs(2), which always reaches the filesystem (stat() may be answered from the
    kernel's attribute cache even when the connection is gone)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in DEAD_ERRNOS
    return False


def clear_dead_mounts(path: StrPath) -> int:
    """Lazily unmount dead mounts stacked on `path` (top first) until it answers again;
    return how many were removed. MountError if one cannot be removed."""
    target = os.path.abspath(path)
    removed = 0
    while is_dead(target):
        top = find_mount(target)
        if top is None:
            break
        unmount(target, lazy=True)
        removed += 1
        log.warning("removed a dead %s mount (source %s) from %s", top.fstype, top.source, target)
    return removed
