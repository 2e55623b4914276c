"""A bootstrap mounted by the kernel's EROFS with the blob's uncompressed view as its device
(written to a regular file here, through the chunk device): file-backed and over loop
devices, equal to the source tree; refusals leave nothing mounted or attached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nydus.format.rafs import open_bootstrap
from nydus.kernel import loop
from nydus.kernel.erofs import mount_erofs
from nydus.kernel.mounts import MountError, is_mounted
from nydus.storage import ChunkDevice, LocalFsBackend
from nydus.storage.view import BlobViews
from tests.helpers.snapshot import compare_trees, snapshot_tree
from tests.helpers.trees import make_full_tree

pytestmark = [pytest.mark.root("EROFS mounts, loop devices"), pytest.mark.kernel("erofs")]
NYDUS_IMAGE = str(Path(sys.executable).parent / "nydus-image")
CS = 0x10000


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    base = tmp_path_factory.mktemp("erofs-img")
    info = make_full_tree(base / "src", chunk_size=CS)
    boot, blobs = base / "bootstrap", base / "blobs"
    blobs.mkdir()
    subprocess.run(
        [
            NYDUS_IMAGE,
            "create",
            str(info.root),
            "--bootstrap",
            str(boot),
            "--blob-dir",
            str(blobs),
            "--chunk-size",
            hex(CS),
            "--log-level",
            "warn",
        ],
        check=True,
    )
    sb = open_bootstrap(boot.read_bytes())
    views = BlobViews(ChunkDevice(sb, LocalFsBackend(dir=str(blobs)), validate=True))
    files = []
    for i in range(len(sb.blobs)):
        f = base / f"view{i}"
        f.write_bytes(views.read(i, 0, views.size(i)))
        files.append(f)
    return boot, files, snapshot_tree(info.root)


@pytest.mark.parametrize("method", ["file", "loop"])
def test_mount_equals_the_source(tmp_path, image, method):
    boot, files, src = image
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = mount_erofs(str(boot), [str(f) for f in files], str(mnt), method)
    try:
        assert m.method == method
        assert (len(m.loops) == 1 + len(files)) if method == "loop" else not m.loops
        diffs = compare_trees(src, mnt, hardlink_types=("reg",))
        assert diffs == []
    finally:
        m.unmount()
    assert not is_mounted(str(mnt))
    assert loop.loops_backed_by(str(boot.parent)) == []


@pytest.mark.parametrize("method", ["file", "loop"])
def test_a_refused_mount_leaves_nothing(tmp_path, image, method):
    boot, files, _src = image
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with pytest.raises(MountError):  # the bootstrap names one device, we give two
        mount_erofs(str(boot), [str(files[0]), str(files[0])], str(mnt), method)
    assert not is_mounted(str(mnt))
    assert loop.loops_backed_by(str(boot.parent)) == []
