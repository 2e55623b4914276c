"""Mounts as the kernel lists them (/proc/self/mountinfo), and unmounting them.

Paths are compared after `os.path.abspath` only: resolving symlinks would stat the mount,
and a FUSE mount whose daemon is starting, stopped or dead may block or fail such a stat.
mountinfo is read instead, which works for all of them. Where several filesystems are
stacked on one mountpoint, the last listed is the topmost (the one a path lookup sees).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from nydus.errors import NydusError

__all__ = [
    "Mount",
    "MountError",
    "find_mount",
    "is_mounted",
    "mount_device",
    "mountpoints_under",
    "mounts",
    "parse_mountinfo",
    "unescape",
    "unmount",
    "unmount_all",
]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

#: umount2(2) flags (<sys/mount.h>)
MNT_FORCE = 1
MNT_DETACH = 2

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


_libc: ctypes.CDLL | None = None


def _umount2(target: str, flags: int) -> int:
    """umount2(2); 0 or the errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.umount2(os.fsencode(target), ctypes.c_int(flags)) == 0:
        return 0
    return ctypes.get_errno()


def _fusermount(target: str, lazy: bool) -> bool:
    """fusermount3 (setuid) unmounts a user's own FUSE mount without privileges."""
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
    flags = (MNT_DETACH if lazy else 0) | (MNT_FORCE if force else 0)
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
