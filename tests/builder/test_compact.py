"""`nydus-image compact`: a four-layer image (small blobs, one layer's big file deleted by the
next) becomes fewer, denser blobs; every file reads back the same through our nydusd and
the kernel (the result exported as one EROFS disk)."""

from __future__ import annotations

import json
import os
import random

import pytest

from tests.builder.conftest import CS, image_ok, run_nydus_image
from tests.daemon.conftest import localfs_config
from tests.helpers.erofs import mount_erofs
from tests.helpers.snapshot import compare_trees

pytestmark = pytest.mark.usefixtures("erofs_env")


@pytest.fixture(scope="module")
def layered(tmp_path_factory, nydus_image):
    """Four layers, each on its parent; layer 2 deletes layer 1's big file (overlayfs
    whiteout) and rewrites one of its small ones."""
    base = tmp_path_factory.mktemp("compact")
    r = random.Random(3)
    blobs = base / "blobs"
    blobs.mkdir()
    parent = None
    for n in range(1, 5):
        src = base / f"l{n}"
        (src / f"d{n}").mkdir(parents=True)
        for i in range(4):
            (src / f"d{n}" / f"f{i}").write_bytes(r.randbytes(r.randint(10, 2 * CS)))
        if n == 1:
            (src / "big.bin").write_bytes(r.randbytes(12 * CS))
        if n == 2:
            os.mknod(src / "big.bin", 0o020000, os.makedev(0, 0))
            (src / "d1").mkdir()
            (src / "d1" / "f0").write_bytes(b"rewritten\n")
        boot = base / f"l{n}.boot"
        args = ["create", src, "-B", boot, "-D", blobs, "--chunk-size", hex(CS)]
        args += ["--whiteout-spec", "overlayfs"]
        if parent:
            args += ["--parent-bootstrap", parent]
        image_ok(nydus_image, *args)
        parent = boot
    return {"base": base, "blobs": blobs, "boot": base / "l4.boot"}


def _blob_ids(nydus_image, boot, tmp_path) -> list[str]:
    out = tmp_path / f"{boot.name}.check.json"
    image_ok(nydus_image, "check", "-B", boot, "-J", out)
    return json.loads(out.read_text())["blobs"]


def _reads_back(nydusd, nydus_image, layered, boot, tmp_path):
    """The compacted image reads back as the source image, with our nydusd and the kernel."""
    blobs = layered["blobs"]
    want = nydusd(layered["boot"], localfs_config(blobs, validate=True))
    got = nydusd(boot, localfs_config(blobs, validate=True))
    assert compare_trees(want.mountpoint, got.mountpoint) == []
    assert (got.mountpoint / "d1" / "f0").read_bytes() == b"rewritten\n"
    assert not (got.mountpoint / "big.bin").exists()
    disk = tmp_path / f"{boot.name}.disk"
    image_ok(nydus_image, "export", "--block", "-B", boot, "-D", blobs, "-O", disk)
    with mount_erofs(disk, mountpoint=tmp_path / f"{boot.name}.mnt") as mnt:
        assert compare_trees(want.mountpoint, mnt) == []


def test_compact_merges_small_blobs_and_keeps_every_file(
    layered,
    nydus_image,
    nydusd,
    tmp_path,
):
    before = _blob_ids(nydus_image, layered["boot"], tmp_path)
    assert len(before) == 4
    out = tmp_path / "compacted.boot"
    report = tmp_path / "compact.json"
    image_ok(
        nydus_image,
        "compact",
        "-B",
        layered["boot"],
        "-D",
        layered["blobs"],
        "-O",
        out,
        "-J",
        report,
    )
    after = json.loads(report.read_text())["blobs"]
    assert after == _blob_ids(nydus_image, out, tmp_path)
    assert len(after) == 1 and after[0] not in before
    # the big file layer 2 deleted is not carried into the new blob
    new_size = (layered["blobs"] / after[0]).stat().st_size
    old_sizes = sum((layered["blobs"] / b).stat().st_size for b in before)
    assert new_size < old_sizes - 12 * CS
    _reads_back(nydusd, nydus_image, layered, out, tmp_path)
    assert layered["boot"].with_name("l4.boot.compact").exists() is False  # -O was given


def test_compact_rebuilds_a_sparse_blob_only(layered, nydus_image, nydusd, tmp_path):
    before = _blob_ids(nydus_image, layered["boot"], tmp_path)
    image_ok(
        nydus_image,
        "compact",
        "-B",
        layered["boot"],
        "-D",
        layered["blobs"],
        "--min-used-ratio",
        "50",
        "--compact-blob-size",
        "0",
    )
    out = layered["boot"].with_name("l4.boot.compact")  # the default output
    after = _blob_ids(nydus_image, out, tmp_path)
    # layer 1's blob (mostly the deleted big file) is rebuilt in place; the others stay
    assert len(after) == 4 and after[1:] == before[1:] and after[0] != before[0]
    assert (layered["blobs"] / after[0]).stat().st_size < (
        layered["blobs"] / before[0]
    ).stat().st_size // 3
    _reads_back(nydusd, nydus_image, layered, out, tmp_path)


def test_compact_with_nothing_to_do_writes_nothing(layered, nydus_image, tmp_path):
    out = tmp_path / "never.boot"
    r = image_ok(
        nydus_image,
        "compact",
        "-B",
        layered["boot"],
        "-D",
        layered["blobs"],
        "-O",
        out,
        "--layers-to-compact",
        "5",
    )
    assert not out.exists() and "no chance" in r.stderr
    r = run_nydus_image(
        nydus_image,
        ["compact", "-B", layered["boot"], "-D", layered["blobs"], "--min-used-ratio", "120"],
    )
    assert r.returncode != 0 and "0-99" in r.stderr
