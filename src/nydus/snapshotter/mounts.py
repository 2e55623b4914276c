"""Mount detection under a directory and unmounting, for removing snapshot trees that may
still hold a (stale) nydusd or overlay mount.

Interim: the shared mount-detection module (issue 8) replaces this once it is on main.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

__all__ = ["is_mounted", "mountpoints_under", "unmount"]

log = logging.getLogger(__name__)


def _unescape(raw: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and len(raw[i + 1 : i + 4]) == 3 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def _mountpoints() -> list[str]:
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return [_unescape(line.split(b" ")[4]) for line in f if line.count(b" ") > 4]
    except OSError:
        return []


def mountpoints_under(path: str | Path) -> list[str]:
    """Mount points at or below `path`."""
    top = os.path.abspath(path)
    return [m for m in _mountpoints() if m == top or m.startswith(top.rstrip("/") + "/")]


def is_mounted(path: str | Path) -> bool:
    return os.path.abspath(path) in _mountpoints()


def unmount(path: str | Path) -> bool:
    """Unmount `path` (lazily if busy); True when nothing is mounted there afterwards."""
    p = os.fspath(path)
    for args in (["umount", p], ["umount", "-l", p]):
        if not is_mounted(p):
            return True
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log.debug("%s: %s", " ".join(args), done.stderr.strip())
    return not is_mounted(p)
