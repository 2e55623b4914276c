"""Images built by our `nydus-image create` from the every-entry-type tree, mounted by our
nydusd: every compressor x digester x cache on/off must reproduce the source tree exactly
(metadata, xattrs, hard links, devices, sparse files, contents)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.conftest import localfs_config
from tests.helpers.env import fixture_needs
from tests.helpers.snapshot import compare_trees, snapshot_tree
from tests.helpers.trees import make_full_tree

CS = 0x10000
NYDUS_IMAGE = str(Path(sys.executable).parent / "nydus-image")
COMPRESSORS = ["none", "lz4_block", "zstd"]
DIGESTERS = ["blake3", "sha256"]


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.root("device nodes, chown, trusted.* xattrs in the source tree"))
def full_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "tree"
    info = make_full_tree(root, chunk_size=CS)
    return info, snapshot_tree(root)


@pytest.fixture(scope="module")
def images(tmp_path_factory, full_tree):
    info, _ = full_tree
    built: dict[tuple[str, str, str], tuple[Path, Path]] = {}

    def get(compressor: str, digester: str, features: str = "") -> tuple[Path, Path]:
        key = (compressor, digester, features)
        if key not in built:
            out = tmp_path_factory.mktemp(f"img-{compressor}-{digester}")
            blobs = out / "blobs"
            blobs.mkdir()
            args = [
                NYDUS_IMAGE,
                "create",
                str(info.root),
                "--bootstrap",
                str(out / "bootstrap"),
                "--blob-dir",
                str(blobs),
                "--compressor",
                compressor,
                "--digester",
                digester,
                "--chunk-size",
                hex(CS),
            ]
            if features:
                args += ["--features", features]
            r = subprocess.run(args, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            built[key] = (out / "bootstrap", blobs)
        return built[key]

    return get


def _check_facts(mnt: Path, info) -> None:
    assert os.lstat(mnt).st_ino == 128  # the root nid
    sts = [os.lstat(mnt / os.fsdecode(p)) for p in info.hardlinks]
    assert len({s.st_ino for s in sts}) == 1 and all(s.st_nlink == 3 for s in sts)
    assert os.lstat(mnt / "dev/null").st_rdev == os.makedev(1, 3)
    assert os.lstat(mnt / "dev/big-minor").st_rdev == os.makedev(259, 70000)
    assert len(os.listdir(mnt / "bigdir")) == info.bigdir_entries
    # byte-exact reads around chunk boundaries and inside the holes of the sparse file
    src = os.path.join(os.fsencode(info.root), info.sparse)
    dst = os.path.join(os.fsencode(mnt), info.sparse)
    with open(src, "rb") as a, open(dst, "rb") as b:
        for off in (0, CS - 3, 1024 * 1024 + 90, 3 * 1024 * 1024 - 10, info.sparse_size - 12):
            assert os.pread(b.fileno(), 40, off) == os.pread(a.fileno(), 40, off), off
    owner = os.lstat(mnt / "owners/huge-ids")
    assert (owner.st_uid, owner.st_gid) == (3_000_000_000, 2_500_000)


@pytest.mark.parametrize("cache", [False, True], ids=["nocache", "blobcache"])
@pytest.mark.parametrize("digester", DIGESTERS)
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_full_tree(nydusd, tmp_path, full_tree, images, compressor, digester, cache):
    info, src_snap = full_tree
    boot, blobs = images(compressor, digester)
    cfg = localfs_config(
        blobs, validate=True, cache_dir=tmp_path / "cache" if cache else None, enable_xattr=True
    )
    d = nydusd(boot, cfg)
    diffs = compare_trees(src_snap, d.mountpoint, hardlink_types=("reg",))
    assert diffs == [], "\n".join(diffs)
    _check_facts(d.mountpoint, info)
    m = d.get("/api/v1/metrics").json()
    assert m["fop_errors"][4] == 0  # no read failed
    assert "digest mismatch" not in d.log()


def test_blob_toc_image(nydusd, tmp_path, full_tree, images):
    """--features blob-toc: chunk digests come from the blob's ToC'd blob.digest section."""
    info, src_snap = full_tree
    boot, blobs = images("zstd", "blake3", "blob-toc")
    d = nydusd(
        boot, localfs_config(blobs, validate=True, cache_dir=tmp_path / "cache", enable_xattr=True)
    )
    assert "INLINED_CHUNK_DIGEST" in d.log().splitlines()[0]
    diffs = compare_trees(src_snap, d.mountpoint, hardlink_types=("reg",))
    assert diffs == [], "\n".join(diffs)
    blob_id = os.listdir(blobs)[0]
    assert (tmp_path / "cache" / f"{blob_id}.blob.digest").exists()


def test_xattrs_hidden_unless_enabled(nydusd, tmp_path, full_tree, images):
    """enable_xattr defaults to false (upstream v1): no xattrs are listed or readable."""
    info, _ = full_tree
    boot, blobs = images("zstd", "blake3")
    d = nydusd(boot, localfs_config(blobs))
    p = d.mountpoint / "xattrs/user"
    assert os.listxattr(p) == []
    with pytest.raises(OSError) as exc:
        os.getxattr(p, "user.comment")
    assert exc.value.errno == 61  # ENODATA
    assert p.read_bytes() == b"x\n"


def test_no_explicit_uid_gid_reports_daemon_ids(nydusd, tmp_path, full_tree):
    """--repeatable (no EXPLICIT_UID_GID): every inode shows nydusd's euid/egid."""
    info, _ = full_tree
    out = tmp_path / "img"
    (out / "blobs").mkdir(parents=True)
    r = subprocess.run(
        [
            NYDUS_IMAGE,
            "create",
            str(info.root),
            "--bootstrap",
            str(out / "b"),
            "--blob-dir",
            str(out / "blobs"),
            "--repeatable",
            "--chunk-size",
            hex(CS),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    d = nydusd(out / "b", localfs_config(out / "blobs"))
    assert "EXPLICIT_UID_GID" not in d.log().splitlines()[0]
    st = os.lstat(d.mountpoint / "owners/huge-ids")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
