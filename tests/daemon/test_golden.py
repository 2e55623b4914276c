"""Upstream-built golden images mounted by our nydusd with digest_validate on
(rafs-format §13): contents, inode numbers, trees and md5 listings."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.daemon.conftest import localfs_config
from tests.golden import V6_BLOB_ID, golden_path

V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
V5_IMAGES = ["sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_v6_golden(nydusd):
    boot = golden_path("upstream", "v6", "bootstrap")
    d = nydusd(boot, localfs_config(golden_path("upstream", "v6", "blobs"), validate=True))
    mnt = d.mountpoint
    assert sorted(os.listdir(mnt)) == ["lib.rs", "sync_io.rs"]
    lib, sync = mnt / "lib.rs", mnt / "sync_io.rs"
    assert _sha256(lib) == "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"
    assert _sha256(sync) == "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"
    assert lib.read_bytes().startswith(
        b"// Copyright (C) 2020 Alibaba Cloud. All rights reserved.\n"
        b"// SPDX-License-Identifier: Apache-2.0"
    )
    st_lib, st_sync, st_root = os.lstat(lib), os.lstat(sync), os.lstat(mnt)
    assert (st_lib.st_ino, st_sync.st_ino, st_root.st_ino) == (133, 136, 128)
    assert (st_lib.st_size, st_sync.st_size) == (16931, 13400)
    assert st_lib.st_mode == 0o100644 and st_root.st_mode == 0o40755
    assert st_lib.st_mtime_ns == 1676819553 * 10**9 + 628661334
    assert st_sync.st_mtime_ns == 1676819553 * 10**9 + 628993084
    assert st_root.st_nlink == 2 and st_lib.st_nlink == 1
    # EXPLICIT_UID_GID is set: the on-disk owner (root) is shown
    assert (st_lib.st_uid, st_lib.st_gid) == (0, 0)
    # a read that starts inside the second half of a chunk and runs past EOF
    with open(sync, "rb") as f:
        f.seek(13000)
        assert f.read(1000) == sync.read_bytes()[13000:]
    assert "digest mismatch" not in d.log()
    m = d.get("/api/v1/metrics/backend").json()
    # CI array + header, ToC, digest array, then the two zstd chunks (7802 bytes of data)
    assert m["read_amount_total"] == 4128 + 1024 + 64 + 7802
    assert m["read_errors"] == 0
    assert V6_BLOB_ID in d.get("/api/v1/daemon/backend", mountpoint="/").text


def _parse_result(path: Path) -> tuple[dict[str, tuple[str, str | None]], dict[str, str]]:
    """The `tree -J` JSON (flattened to path -> (type, target)) and the md5 lines."""
    text = path.read_text()
    doc, end = json.JSONDecoder().raw_decode(text)
    tree: dict[str, tuple[str, str | None]] = {}

    def visit(node: dict, prefix: str) -> None:
        for child in node.get("contents", []):
            p = f"{prefix}/{child['name']}"
            tree[p] = (child["type"], child.get("target"))
            if child["type"] == "directory":
                visit(child, p)

    root = doc[0]
    assert root["type"] == "directory"
    visit(root, "")
    md5 = {}
    for line in text[end:].splitlines():
        if line.strip():
            digest, p = line.split(None, 1)
            md5[p.strip()] = digest
    return tree, md5


def _walk_mount(mnt: Path) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, mnt)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("directory", None)
            else:
                out[rel] = ("file", None)
    return out


@pytest.mark.parametrize("image", V5_IMAGES)
def test_v5_golden(nydusd, image):
    boot = golden_path("upstream", "v5", image)
    expect_tree, expect_md5 = _parse_result(golden_path("upstream", "v5", f"{image}.result"))
    d = nydusd(boot, localfs_config(golden_path("upstream", "v5", "blobs"), validate=True))
    mnt = d.mountpoint
    got = _walk_mount(mnt)
    assert got == expect_tree
    kinds = [t for t, _ in got.values()]
    # 24 directories with the root, 23 regular-file entries, 7 symlinks (rafs-format §13.2)
    assert (kinds.count("directory") + 1, kinds.count("file"), kinds.count("link")) == (24, 23, 7)
    assert len(expect_md5) == 23
    for p, digest in expect_md5.items():
        assert hashlib.md5((mnt / p.lstrip("/")).read_bytes()).hexdigest() == digest, p
    # one inode, three names, nlink 3; the inode number is the v5 i_ino (5)
    names = ["hardlink-test/foo", "hardlink-test/test.sh", "normal-file-test/test.sh"]
    sts = [os.lstat(mnt / n) for n in names]
    assert {s.st_ino for s in sts} == {5}
    assert all(s.st_nlink == 3 for s in sts)
    assert os.readlink(mnt / "symlink-test/root-1") == "/////////////////"
    root = os.lstat(mnt)
    assert root.st_ino == 1 and root.st_mode == 0o40755 and root.st_nlink == 5
    # no EXPLICIT_UID_GID: the daemon's own ids are reported
    assert (sts[0].st_uid, sts[0].st_gid) == (os.geteuid(), os.getegid())
    head = mnt / "normal-file-test/holefiles/head-hole-1"
    assert head.stat().st_size == 2097159
    assert hashlib.md5(head.read_bytes()).hexdigest() == "ea7ac8dc0ae3673040f3b1d816d972d7"
    m = d.get("/api/v1/metrics/backend").json()
    assert m["read_errors"] == 0
    assert "digest mismatch" not in d.log()


def test_v5_legacy_layout_is_refused(tmp_path):
    """The pre-release v5 layout of v5-daemon/bootstrap is rejected with one clean error."""
    from tests.daemon.conftest import findmnt, run_nydusd

    boot = golden_path("upstream", "v5-daemon", "bootstrap")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    r = run_nydusd(["-D", str(blobs), "--mountpoint", str(mnt), "--bootstrap", str(boot)])
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if " - ERROR - " in ln]
    assert len(errors) == 1, r.stderr
    assert "legacy pre-release inode layout" in errors[0]
    assert "Traceback" not in r.stderr
    assert findmnt(mnt) == ""


def test_mount_is_read_only_and_statfs(nydusd):
    import errno as _errno

    d = nydusd(
        golden_path("upstream", "v6", "bootstrap"),
        localfs_config(golden_path("upstream", "v6", "blobs")),
    )
    mnt = d.mountpoint
    for action in (
        lambda: open(mnt / "lib.rs", "r+b"),
        lambda: open(mnt / "new", "wb"),
        lambda: os.mkdir(mnt / "dir"),
        lambda: os.chmod(mnt / "lib.rs", 0o600),
        lambda: os.unlink(mnt / "lib.rs"),
        lambda: os.setxattr(mnt / "lib.rs", "user.x", b"1"),
    ):
        with pytest.raises(OSError) as exc:
            action()
        assert exc.value.errno == _errno.EROFS
    st = os.statvfs(mnt)
    assert st.f_bsize == 4096 and st.f_blocks == 9 and st.f_files == 3
    assert st.f_namemax == 255
    assert os.listxattr(mnt / "lib.rs") == []  # enable_xattr defaults to false
