"""GNU tar as an outside oracle for tar streams our tools write."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["gnu_extract"]


def gnu_extract(tar: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract `tar` into the new directory `dest` as root would: numeric owners, modes,
    every xattr (`SCHILY.xattr.*`, ACLs included), hard links, devices."""
    out = Path(dest)
    out.mkdir()
    done = subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            os.fspath(tar),
            "-C",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"tar -x {tar}: {done.stderr}"
    return out
