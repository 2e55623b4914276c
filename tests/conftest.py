"""Generic pytest fixtures shared by every test package (nothing builder- or daemon-specific)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(REPO_ROOT) not in sys.path:  # `tests` is a package: make `import tests.helpers` work
    sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.env import (  # noqa: E402
    EROFS_MOUNT,
    NEEDS,
    NEEDS_ATTR,
    OVERLAY_MOUNT,
    fixture_needs,
    missing,
    unmet,
)


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


# fixtures that only declare needs (the markers say the same; kept for tests that ask for them)
@pytest.fixture(scope="session")
@fixture_needs(pytest.mark.root())
def require_root() -> None:
    """Root (loop devices, mount, mknod, chown, trusted.* xattrs)."""


@pytest.fixture(scope="session")
@fixture_needs(*EROFS_MOUNT)
def erofs_env() -> None:
    """Root, kernel EROFS, losetup and erofs-utils."""


@pytest.fixture(scope="session")
@fixture_needs(*OVERLAY_MOUNT)
def overlay_env() -> None:
    """Root and kernel overlayfs."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test inherits the needs its fixtures declare with ``tests.helpers.env.fixture_needs``
    (so ``-m "not root"`` deselects it too)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        for name in getattr(item, "fixturenames", ()):
            defs = info.name2fixturedefs.get(name)
            if defs:  # the last definition is the one this test gets
                for mark in getattr(defs[-1].func, NEEDS_ATTR, ()):
                    item.add_marker(mark)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The one policy for needs (root, kernel, tools, golden), before any fixture is set up:
    an unmet need skips the test with the reason, or fails it in CI (``tests.helpers.env``)."""
    for name in NEEDS:
        for mark in item.iter_markers(name):
            reason = unmet(name, mark.args)
            if reason:
                missing(reason)
