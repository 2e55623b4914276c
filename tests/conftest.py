"""Generic pytest fixtures shared by every test package (nothing builder- or daemon-specific)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(REPO_ROOT) not in sys.path:  # `tests` is a package: make `import tests.helpers` work
    sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.env import require_kernel_fs, require_tools  # noqa: E402


def _venv_script(name: str) -> str | None:
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    return shutil.which(name)


@pytest.fixture(scope="session")
def nydus_image() -> str:
    """Path of the ``nydus-image`` console script of the interpreter running the tests."""
    path = _venv_script("nydus-image")
    if path is None:
        pytest.fail("nydus-image console script not installed (pip install -e . into this venv)")
    return path


@pytest.fixture(scope="session")
def require_root() -> None:
    """Skip when not root: loop devices, mounts, mknod, chown and trusted.* xattrs need it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount, mknod, chown, trusted.* xattrs)")


@pytest.fixture(scope="session")
def erofs_env(require_root: None) -> None:
    """Root, kernel EROFS, losetup and erofs-utils present."""
    require_tools("losetup", "mount", "umount", "mkfs.erofs", "fsck.erofs", "dump.erofs")
    require_kernel_fs("erofs")


@pytest.fixture(scope="session")
def overlay_env(require_root: None) -> None:
    """Root and kernel overlayfs present."""
    require_tools("mount", "umount")
    require_kernel_fs("overlay")
