"""`nydus-image create` on the every-entry-type tree, checked by the kernel EROFS driver and
erofs-utils (format spec section 12): metadata, file data, fsck, reproducibility, dedup.

Known, specified differences from the source tree that these tests allow:

* the root directory's mtime (the builder zeroes it, spec 4.7);
* hard links between non-regular files (the builder never shares an inode between symlinks,
  spec 4.7), so hard-link groups are compared among regular files only;
* ``fsck.erofs --extract`` (erofs-utils 1.5) drops xattrs, hard links and setuid/setgid bits,
  whatever the image (see tests/helpers/test_helpers.py), so that comparison skips them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests.builder.conftest import CS, run_nydus_image
from tests.helpers.env import EROFS_MOUNT, marked
from tests.helpers.erofs import fsck_erofs, mount_erofs
from tests.helpers.snapshot import compare_trees, snapshot_tree

MATRIX = [
    ("none", "blake3"),
    ("none", "sha256"),
    ("lz4_block", "blake3"),
    ("lz4_block", "sha256"),
    ("zstd", "blake3"),
    ("zstd", "sha256"),
]
ROOT_NID = 128  # spec 4.6: the root inode sits at nid 128; the kernel's st_ino is the nid


def _ids(params):
    return [f"{c}-{d}" for c, d in params]


def _check_common_facts(mp: Path, full_tree) -> None:
    """Concrete facts the kernel must report, beyond the generic tree comparison."""
    assert os.lstat(mp).st_ino == ROOT_NID
    sts = [os.lstat(mp / os.fsdecode(p)) for p in full_tree.hardlinks]
    assert len({s.st_ino for s in sts}) == 1, "hard-linked regular files must share one nid"
    assert all(s.st_nlink == 3 for s in sts)
    assert os.lstat(mp / "dev/null").st_rdev == os.makedev(1, 3)
    assert os.lstat(mp / "dev/big-minor").st_rdev == os.makedev(259, 70000)
    assert stat.S_ISFIFO(os.lstat(mp / "dev/fifo").st_mode)
    assert os.readlink(mp / "links/long") == (b"long-target/" * 30)[:299].decode() + "T"
    big = sorted(os.listdir(mp / "bigdir"))
    assert len(big) == full_tree.bigdir_entries
    assert big[0] == " sorts-first" and big[-1] == "~sorts-last"
    root_names = os.listdir(os.fsencode(mp))
    assert {b" sp", b"+plus", b"-dash", b"!bang", b"hardlink3.txt"} <= set(root_names)
    assert os.lstat(os.path.join(os.fsencode(mp), full_tree.long_name)).st_size == 10


def _check_report(built, compressor: str) -> None:
    rep = built.report
    assert rep["fs_version"] == "6"
    assert rep["bootstrap"] == str(built.bootstrap)
    assert str(rep["compressor"]).lower().replace("_", "") == compressor.replace("_", "")
    assert len(rep["blobs"]) == 1 and built.blob is not None
    assert all(len(b) == 64 and int(b, 16) >= 0 for b in rep["blobs"])
    # without a chunk-digest array (no --features blob-toc) the blob id is the file's SHA-256 (spec 6.9)
    assert hashlib.sha256(built.blob.read_bytes()).hexdigest() == rep["blobs"][0]
    assert built.bootstrap.stat().st_size % 4096 == 0


@marked(*EROFS_MOUNT)
@pytest.mark.parametrize(("compressor", "digester"), MATRIX, ids=_ids(MATRIX))
def test_metadata_through_kernel(
    full_tree, full_builds, compressor, digester, tmp_path, nydus_image
):
    """(a) The bootstrap alone, loop-mounted by the kernel, lists the source tree's metadata."""
    built = full_builds(compressor, digester)
    _check_report(built, compressor)
    with mount_erofs(built.bootstrap, [], tmp_path / "mnt") as mp:
        diffs = compare_trees(full_tree.root, mp, check_content=False, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)
        _check_common_facts(mp, full_tree)
    r = run_nydus_image(nydus_image, ["check", "--bootstrap", built.bootstrap])
    assert r.returncode == 0, r.stderr
    assert built.blobs[0] in r.stdout + r.stderr


@marked(*EROFS_MOUNT)
@pytest.mark.parametrize("digester", ["blake3", "sha256"])
def test_data_through_kernel(full_tree, full_builds, digester, tmp_path):
    """(b) --compressor none: the blob is the uncompressed view; every file's bytes match."""
    built = full_builds("none", digester)
    with mount_erofs(built.bootstrap, [built.blob], tmp_path / "mnt") as mp:
        diffs = compare_trees(full_tree.root, mp, check_content=True, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)
        # byte-exact reads around chunk boundaries and inside holes of the sparse file
        src = os.path.join(os.fsencode(full_tree.root), full_tree.sparse)
        dst = os.path.join(os.fsencode(mp), full_tree.sparse)
        with open(src, "rb") as a, open(dst, "rb") as b:
            for off in (
                0,
                CS - 3,
                1024 * 1024 + 90,
                3 * 1024 * 1024 - 10,
                full_tree.sparse_size - 12,
            ):
                a.seek(off)
                b.seek(off)
                assert b.read(40) == a.read(40), off


@pytest.mark.tools("fsck.erofs")
@pytest.mark.parametrize("digester", ["blake3", "sha256"])
def test_fsck_erofs(full_tree, full_builds, digester, tmp_path):
    """(c) fsck.erofs --device=BLOB BOOTSTRAP passes; --extract reproduces the tree."""
    built = full_builds("none", digester)
    rc, out = fsck_erofs(built.bootstrap, device=built.blob)
    assert rc == 0, out
    rc, out = fsck_erofs(built.bootstrap, device=built.blob, extract=tmp_path / "out")
    assert rc == 0, out
    diffs = compare_trees(
        full_tree.root,
        tmp_path / "out",
        check_xattrs=False,
        ignore_fields={"ino"},
        mode_mask=0o1777,
    )
    assert diffs == [], "\n".join(diffs)


@marked(*EROFS_MOUNT)
def test_blob_toc_variant_through_kernel(full_tree, create, tmp_path):
    """(b') --features blob-toc appends a ToC after the CI area; the kernel still reads the data."""
    built = create(full_tree.root, tmp_path / "toc", "--features", "blob-toc", compressor="none")
    rc, out = fsck_erofs(built.bootstrap, device=built.blob)
    assert rc == 0, out
    with mount_erofs(built.bootstrap, [built.blob], tmp_path / "mnt") as mp:
        diffs = compare_trees(full_tree.root, mp, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)


@pytest.mark.parametrize("compressor", ["none", "lz4_block", "zstd"])
def test_two_builds_are_byte_identical(full_tree, full_builds, create, compressor, tmp_path):
    """(d) Building the same input twice gives the same bootstrap and blob, byte for byte."""
    first = full_builds(compressor, "blake3")
    second = create(full_tree.root, tmp_path / "again", compressor=compressor, digester="blake3")
    assert second.bootstrap.read_bytes() == first.bootstrap.read_bytes()
    assert first.blob is not None and second.blob is not None
    assert second.blob.read_bytes() == first.blob.read_bytes()
    assert second.blobs == first.blobs


def test_chunk_dedup_in_uncompressed_blob(full_tree, full_builds):
    """Identical chunks (zero chunks, repeated chunks, duplicate files, holes) are stored once:
    the uncompressed blob holds exactly the distinct chunks, each 4 KiB aligned, plus its
    chunk-info array and 4 KiB meta header."""
    snap = snapshot_tree(full_tree.root, content=False)
    seen_inodes: set[int] = set()
    distinct: dict[bytes, int] = {}
    for path, e in snap.items():
        if e.type != "reg" or e.ino in seen_inodes:
            continue
        seen_inodes.add(e.ino)
        with open(os.path.join(os.fsencode(full_tree.root), path), "rb") as f:
            while chunk := f.read(CS):
                distinct[hashlib.sha256(chunk).digest()] = len(chunk)
    aligned = sum((n + 4095) // 4096 * 4096 for n in distinct.values())
    total = sum(e.size for p, e in snap.items() if e.type == "reg")
    built = full_builds("none", "blake3")
    assert built.blob is not None
    size = built.blob.stat().st_size
    assert aligned - 4096 <= size <= aligned + 4096 + 24 * len(distinct) + 4096, (
        size,
        aligned,
        len(distinct),
    )
    assert size < total * 0.6  # sanity: dedup really removed the repeated data


@marked(*EROFS_MOUNT)
@pytest.mark.parametrize("chunk_size", [0x1000, 0x1000000], ids=["4KiB", "16MiB"])
def test_chunk_size_limits(full_tree, create, chunk_size, tmp_path):
    """The smallest and largest allowed chunk sizes (spec 2.3) give correct data through the kernel."""
    built = create(full_tree.root, tmp_path / "out", compressor="none", chunk_size=chunk_size)
    rc, out = fsck_erofs(built.bootstrap, device=built.blob)
    assert rc == 0, out
    with mount_erofs(built.bootstrap, [built.blob], tmp_path / "mnt") as mp:
        diffs = compare_trees(full_tree.root, mp, hardlink_types=("reg",))
        assert diffs == [], "\n".join(diffs)


@marked(*EROFS_MOUNT)
def test_repeatable_drops_explicit_ids(full_tree, create, tmp_path):
    """--repeatable: no explicit uid/gid (spec 2.4 EXPLICIT_UID_GID clear), so the kernel, which
    always reports the on-disk values, shows 0:0 everywhere; everything else is unchanged."""
    built = create(full_tree.root, tmp_path / "out", "--repeatable", compressor="none")
    with mount_erofs(built.bootstrap, [], tmp_path / "mnt") as mp:
        snap = snapshot_tree(mp, content=False)
        assert {(e.uid, e.gid) for e in snap.values()} == {(0, 0)}
        diffs = compare_trees(
            full_tree.root,
            snap,
            check_content=False,
            hardlink_types=("reg",),
            ignore_fields={"uid", "gid"},
        )
        # security.capability blobs carry no uid (v2), so nothing else may differ
        assert diffs == [], "\n".join(diffs)
