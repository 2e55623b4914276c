"""Saying what a path is when it is not the directory a command wants."""

from __future__ import annotations

import os
import stat

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_directory(path: str | os.PathLike[str]) -> str | None:
    """None when `path` is a directory (symlinks followed); else why not, as a phrase:
    "does not exist", "is a regular file, not a directory", "cannot be examined: ..."."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a component of the path is not a directory)"
    except OSError as exc:
        return f"cannot be examined: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return None
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a directory")
    return f"is {kind}, not a directory"
