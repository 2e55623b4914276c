"""Layered builds (`--parent-bootstrap`) from OCI layer tars and from overlayfs-style directories,
checked against the kernel's overlayfs view of the same layers (format spec section 10), and the
upstream tar fixture ``all-entry-type.tar`` (spec 13.5).

The reference view is built without our code: each tar is unpacked by Python's tarfile with OCI
whiteouts turned into overlayfs ones, and overlayfs merges them (tests/helpers/layers.py).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from tests.builder.conftest import CS
from tests.golden import golden_path
from tests.helpers.env import EROFS_MOUNT, OVERLAY_MOUNT, marked
from tests.helpers.erofs import fsck_erofs, mount_erofs
from tests.helpers.layers import (
    overlay_view,
    three_layer_members,
    unpack_layer,
    write_layer,
    write_three_layers,
)
from tests.helpers.snapshot import compare_trees, snapshot_tree


def _build_stack(create, sources, out: Path, *, type_args, compressor="none"):
    """Build each layer on the previous one's bootstrap; blobs go to one --blob-dir."""
    blob_dir = out / "blobs"
    builds = []
    parent = None
    for i, src in enumerate(sources, 1):
        extra = [*type_args]
        if parent is not None:
            extra += ["--parent-bootstrap", parent.bootstrap]
        b = create(
            src, out, *extra, compressor=compressor, blob_dir=blob_dir, name=f"layer{i}.boot"
        )
        builds.append(b)
        parent = b
    return builds, blob_dir


def _check_blob_tables(builds, blob_dir: Path) -> None:
    """Each layer adds exactly its own blob after the parent's blob table (spec 10.2 rule 4)."""
    for i, b in enumerate(builds):
        assert len(b.blobs) == i + 1, b.blobs
        if i:
            assert b.blobs[:-1] == builds[i - 1].blobs
        for blob_id in b.blobs:
            assert (blob_dir / blob_id).is_file(), f"--blob-dir did not receive {blob_id}"
    assert len(set(builds[-1].blobs)) == len(builds)


def _compare_levels(builds, blob_dir: Path, tars, tmp_path: Path, *, content: bool) -> None:
    """Every intermediate bootstrap equals the overlay of the layers up to it."""
    for level, built in enumerate(builds, 1):
        devices = built.blob_paths(blob_dir) if content else []
        with (
            overlay_view(tars[:level], tmp_path / f"ref{level}") as ref,
            mount_erofs(built.bootstrap, devices, tmp_path / f"mnt{level}") as mp,
        ):
            diffs = compare_trees(ref, mp, check_content=content, hardlink_types=("reg",))
            assert diffs == [], f"layer {level}:\n" + "\n".join(diffs)
            if level == 3:
                # spot checks of the whiteout semantics in the built image itself
                names = set(snapshot_tree(mp, content=False))
                assert b"etc/hosts" not in names and b"opt" not in names
                assert sorted(n for n in names if n.startswith(b"var/cache/")) == [b"var/cache/new"]
                assert os.path.isdir(mp / "etc/passwd") and os.path.isfile(mp / "var/lib")
                assert "trusted.overlay.opaque" not in os.listxattr(mp / "var/cache")
                assert not any(os.path.basename(n).startswith(b".wh.") for n in names)


@marked(*EROFS_MOUNT, *OVERLAY_MOUNT)
@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_three_tar_layers_equal_overlay_view(create, tmp_path, compressor):
    """(e) tar-rafs layer by layer with --parent-bootstrap == overlayfs over the three tars."""
    tars = write_three_layers(tmp_path / "tars", chunk_size=CS)
    builds, blob_dir = _build_stack(
        create, tars, tmp_path / "out", type_args=["--type", "tar-rafs"], compressor=compressor
    )
    _check_blob_tables(builds, blob_dir)
    _compare_levels(builds, blob_dir, tars, tmp_path, content=compressor == "none")
    if compressor == "none":
        top = builds[-1]
        rc, out = fsck_erofs(top.bootstrap, device=top.blob_paths(blob_dir))
        assert rc == 0, out


@marked(*EROFS_MOUNT, *OVERLAY_MOUNT)
def test_three_dir_layers_overlayfs_whiteouts(create, tmp_path):
    """(e) the same layers unpacked as overlayfs directories (char 0:0 whiteouts, opaque xattr),
    built with --whiteout-spec overlayfs, give the same view."""
    tars = write_three_layers(tmp_path / "tars", chunk_size=CS)
    dirs = [unpack_layer(t, tmp_path / "dirs" / f"layer{i}") for i, t in enumerate(tars, 1)]
    builds, blob_dir = _build_stack(
        create,
        dirs,
        tmp_path / "out",
        type_args=["--type", "dir-rafs", "--whiteout-spec", "overlayfs"],
    )
    _check_blob_tables(builds, blob_dir)
    _compare_levels(builds, blob_dir, tars, tmp_path, content=True)


def test_cross_layer_chunk_dedup(create, tmp_path):
    """A chunk already in a parent blob is not stored again: layer 2's libfoo.so.1 shares its
    first 64 KiB chunk with layer 1's, so layer 2's blob holds only the new tail."""
    tars = write_three_layers(tmp_path / "tars", chunk_size=CS)
    builds, blob_dir = _build_stack(
        create, tars[:2], tmp_path / "out", type_args=["--type", "tar-rafs"]
    )
    layer2 = three_layer_members(CS)[1]
    new_data = sum(len(m.data) for m in layer2 if m.kind == "file")
    blob2 = (blob_dir / builds[1].blobs[1]).stat().st_size
    # layer 2's files hold new_data bytes, CS of which are already stored in layer 1's blob
    assert blob2 < new_data - CS + 8 * 4096 + 4096, (blob2, new_data)


@marked(*EROFS_MOUNT, *OVERLAY_MOUNT)
@pytest.mark.parametrize("variant", ["gnu", "ustar", "gzip"])
def test_single_layer_formats(create, tmp_path, variant):
    """GNU (long-name records, base-256 ids), ustar (prefix field) and gzip-compressed
    (targz-rafs) layers build to the same tree as their overlay view."""
    members = three_layer_members(CS)[0]
    if variant in ("gnu", "ustar"):
        members = [m for m in members if not m.xattrs]  # xattrs need PAX records
    if variant == "ustar":
        # ustar cannot store ids >= 8**7; keep names within its 155+100 split
        members = [m for m in members if m.uid < 8**7 and m.gid < 8**7]
    fmt = "pax" if variant == "gzip" else variant
    compress = "gzip" if variant == "gzip" else None
    tar = write_layer(
        tmp_path / ("layer.tar.gz" if compress else "layer.tar"),
        members,
        fmt=fmt,
        compress=compress,
    )
    type_ = "targz-rafs" if compress else "tar-rafs"
    built = create(tar, tmp_path / "out", "--type", type_)
    with (
        overlay_view([tar], tmp_path / "ref") as ref,
        mount_erofs(built.bootstrap, [built.blob], tmp_path / "mnt") as mp,
    ):
        diffs = compare_trees(ref, mp, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)
        if variant == "gnu":
            assert any(len(os.fsencode(p)) > 100 for p in snapshot_tree(mp, content=False))


@pytest.mark.golden
@marked(*EROFS_MOUNT, *OVERLAY_MOUNT)
def test_upstream_all_entry_type_tar(create, tmp_path):
    """(f) upstream's all-entry-type.tar: the four hard-linked names are one nid with nlink 4
    holding the 15 bytes ``This is a test\\n`` (spec 13.5), and the whole tree equals its
    overlay view."""
    tar = golden_path("upstream", "all-entry-type.tar")
    with tarfile.open(tar) as tf:
        expected = tf.extractfile("tar/dir1/dir3/hardlink1.txt").read()  # type: ignore[union-attr]
    assert expected == b"This is a test\n" and len(expected) == 15
    built = create(tar, tmp_path / "out", "--type", "tar-rafs")
    names = [
        "tar/dir1/dir3/hardlink1.txt",
        "tar/dir1/dir3/xfile.txt",
        "tar/dir1/hardlink2.txt",
        "tar/dir2/hardlink3.txt",
    ]
    with mount_erofs(built.bootstrap, [], tmp_path / "meta") as mp:
        sts = [os.lstat(mp / n) for n in names]
        assert len({s.st_ino for s in sts}) == 1, [s.st_ino for s in sts]
        assert all(s.st_nlink == 4 and s.st_size == 15 for s in sts)
        assert os.readlink(mp / "tar/dir2/symlink1.txt") == "../dir1/dir3/file1.txt"
    with (
        overlay_view([tar], tmp_path / "ref") as ref,
        mount_erofs(built.bootstrap, [built.blob], tmp_path / "mnt") as mp,
    ):
        for n in names:
            assert (mp / n).read_bytes() == expected
        diffs = compare_trees(ref, mp, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)
    rc, out = fsck_erofs(built.bootstrap, device=built.blob)
    assert rc == 0, out
    assert hashlib.sha256(built.blob.read_bytes()).hexdigest() == built.blobs[0]


@marked(*EROFS_MOUNT)
def test_whiteout_spec_none_keeps_whiteouts(create, tmp_path):
    """--whiteout-spec none (what nydusify uses per layer, spec 10.1): `.wh.` entries are kept as
    ordinary files and nothing is removed from the parent."""
    tars = write_three_layers(tmp_path / "tars", chunk_size=CS)
    first = create(
        tars[0], tmp_path / "out", "--type", "tar-rafs", "--whiteout-spec", "none", name="l1"
    )
    second = create(
        tars[1],
        tmp_path / "out",
        "--type",
        "tar-rafs",
        "--whiteout-spec",
        "none",
        "--parent-bootstrap",
        first.bootstrap,
        name="l2",
    )
    with mount_erofs(second.bootstrap, [], tmp_path / "mnt") as mp:
        assert os.path.isfile(mp / "etc/.wh.hosts") and os.path.isfile(mp / "etc/hosts")
        assert os.path.isfile(mp / "var/cache/.wh..wh..opq")
        assert sorted(os.listdir(mp / "var/cache")) == [".wh..wh..opq", "a", "b", "new", "sub"]


@marked(*EROFS_MOUNT, *OVERLAY_MOUNT)
def test_layer_without_data_writes_no_blob(create, tmp_path):
    """A layer holding no file data (dirs, empty files, symlinks, whiteouts) writes no blob; on a
    parent its blob table is the parent's (spec 10.2)."""
    from tests.helpers.layers import D as Dir
    from tests.helpers.layers import F as File
    from tests.helpers.layers import L as Link
    from tests.helpers.layers import whiteout as wh

    base = write_layer(
        tmp_path / "base.tar", [Dir("d"), File("d/data", b"some data\n"), File("d/gone", b"x")]
    )
    meta_only = write_layer(
        tmp_path / "meta.tar",
        [Dir("d"), File("d/empty"), Link("d/link", "data"), wh("d/gone"), Dir("e")],
    )
    blob_dir = tmp_path / "blobs"
    b1 = create(base, tmp_path / "out", "--type", "tar-rafs", blob_dir=blob_dir, name="l1")
    b2 = create(
        meta_only,
        tmp_path / "out",
        "--type",
        "tar-rafs",
        "--parent-bootstrap",
        b1.bootstrap,
        blob_dir=blob_dir,
        name="l2",
    )
    assert b2.blobs == b1.blobs and sorted(p.name for p in blob_dir.iterdir()) == b1.blobs
    alone = create(meta_only, tmp_path / "alone", "--type", "tar-rafs")
    assert alone.blobs == [] and alone.blob is None
    assert not (tmp_path / "alone" / "bootstrap.blob").exists()
    rc, out = fsck_erofs(alone.bootstrap)
    assert rc == 0, out
    with (
        overlay_view([base, meta_only], tmp_path / "ref") as ref,
        mount_erofs(b2.bootstrap, b2.blob_paths(blob_dir), tmp_path / "mnt") as mp,
    ):
        diffs = compare_trees(ref, mp, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)
    with mount_erofs(alone.bootstrap, [], tmp_path / "mnt2") as mp:
        assert sorted(os.listdir(mp / "d")) == ["empty", "link"]
