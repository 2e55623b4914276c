"""What a test needs from the machine, and the one policy for a need the machine lacks.

Tests declare needs with markers (registered in ``pyproject.toml``):

* ``@pytest.mark.root("why")``        - euid 0 (loop devices, mount, mknod, chown, trusted.*)
* ``@pytest.mark.kernel("erofs")``    - kernel filesystems (``/proc/filesystems``); ``"fuse"``
  also wants ``/dev/fuse``
* ``@pytest.mark.tools("skopeo")``    - command-line tools on ``PATH`` (or absolute paths)
* ``@pytest.mark.golden``             - the shared golden vectors (``tests/golden.py``)

The root ``conftest.py`` applies them before a test's fixtures are set up.  A need that is not
met skips the test with the reason; with ``CI`` set to a true value in the environment it fails
the test instead, so a CI machine that lost root, a tool or the golden set fails loudly rather
than passing with fewer tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from .erofs import kernel_has

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "EROFS_MOUNT",
    "NEEDS",
    "OVERLAY_MOUNT",
    "fixture_needs",
    "in_ci",
    "marked",
    "missing",
    "require_kernel_fs",
    "require_tools",
    "unmet",
]

NEEDS = ("root", "kernel", "tools", "golden")
NEEDS_ATTR = "_nydus_test_needs"

# mounting our images with the kernel's EROFS over loop devices, checking them with erofs-utils
EROFS_MOUNT = (
    pytest.mark.root("loop devices, EROFS mounts"),
    pytest.mark.kernel("erofs"),
    pytest.mark.tools("losetup", "mount", "umount", "mkfs.erofs", "fsck.erofs", "dump.erofs"),
)
# the overlayfs reference view of a layer stack
OVERLAY_MOUNT = (
    pytest.mark.root("overlayfs mounts"),
    pytest.mark.kernel("overlay"),
    pytest.mark.tools("mount", "umount"),
)


def marked(*marks: pytest.MarkDecorator) -> Callable[[F], F]:
    """Apply several markers at once: ``@marked(*EROFS_MOUNT)``."""

    def apply(fn: F) -> F:
        for m in reversed(marks):
            fn = m(fn)
        return fn

    return apply


def fixture_needs(*marks: pytest.MarkDecorator) -> Callable[[F], F]:
    """Declare what a fixture needs (put it under ``@pytest.fixture``): every test using the
    fixture, directly or through other fixtures, gets these markers (root ``conftest.py``)."""

    def mark(fn: F) -> F:
        setattr(fn, NEEDS_ATTR, (*getattr(fn, NEEDS_ATTR, ()), *marks))
        return fn

    return mark


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """The policy for an unmet need: skip saying why, or fail in CI."""
    if in_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _golden_dir() -> Path:
    from tests.golden import GOLDEN  # tests.golden imports this module

    return GOLDEN


def unmet(name: str, args: tuple[Any, ...] = ()) -> str | None:
    """Why the need ``name`` (a marker name, with the marker's args) is not met, or None."""
    if name == "root":
        if os.geteuid() != 0:
            why = ", ".join(args) or "loop devices, mount, mknod, chown, trusted.* xattrs"
            return f"needs root ({why})"
    elif name == "kernel":
        lacks = [f for f in args if not kernel_has(f)]
        if "fuse" in args and not os.path.exists("/dev/fuse"):
            lacks.append("/dev/fuse")
        if lacks:
            return f"kernel lacks filesystem(s): {', '.join(lacks)}"
    elif name == "tools":
        absent = [t for t in args if not (Path(t).exists() if "/" in t else shutil.which(t))]
        if absent:
            return f"tool(s) not installed: {', '.join(absent)}"
    elif name == "golden":
        g = _golden_dir()
        if not g.is_dir():
            return f"golden vectors absent: {g} (../shared/golden beside the repository, or NYDUS_GOLDEN)"
    return None


def require_tools(*names: str) -> None:
    """Apply the policy to the calling test when one of the command-line tools is missing."""
    reason = unmet("tools", names)
    if reason:
        missing(reason)


def require_kernel_fs(*fstypes: str) -> None:
    """Apply the policy to the calling test when the kernel lacks one of the filesystems."""
    reason = unmet("kernel", fstypes)
    if reason:
        missing(reason)
