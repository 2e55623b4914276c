"""Skip helpers for tests that need tools or kernel features the machine may lack."""

from __future__ import annotations

import shutil

import pytest

from .erofs import kernel_has

__all__ = ["require_kernel_fs", "require_tools"]


def require_tools(*names: str) -> None:
    """Skip the calling test when one of the command-line tools is not installed."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"tool(s) not installed: {', '.join(missing)}")


def require_kernel_fs(*fstypes: str) -> None:
    """Skip the calling test when the kernel lacks one of the filesystems."""
    missing = [f for f in fstypes if not kernel_has(f)]
    if missing:
        pytest.skip(f"kernel lacks filesystem(s): {', '.join(missing)}")
