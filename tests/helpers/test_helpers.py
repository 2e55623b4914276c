"""Self-tests of the test helpers against oracles that do not involve our code.

The full fixture tree is built into an EROFS image by erofs-utils' ``mkfs.erofs`` (chunked,
data on an extra device), mounted by the kernel with the helpers, and must compare equal to the
source.  erofs-utils 1.5 limitations found and excluded *here only*:

* ``mkfs.erofs`` 1.5 fails on a 255-byte file name ("Could not format the device: [Error 2]"),
  so that one file is moved out of the tree before the build;
* ``-T0`` (or ``-T`` with ``--preserve-mtime``) sets every mtime to 0, so the image is built
  without ``-T`` and with ``--preserve-mtime``;
* ``fsck.erofs --extract`` 1.5 drops xattrs, does not recreate hard links and loses setuid/setgid
  bits, so the extraction comparison skips those three things.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers.env import EROFS_MOUNT, OVERLAY_MOUNT, fixture_needs, marked
from tests.helpers.erofs import MountError, fsck_erofs, loop_device, mount_erofs
from tests.helpers.layers import (
    CHR,
    OPAQUE_XATTR,
    D,
    F,
    H,
    L,
    layer_bytes,
    opaque,
    overlay_view,
    three_layer_members,
    unpack_layer,
    whiteout,
    write_layer,
    write_three_layers,
)
from tests.helpers.proc import run_measured
from tests.helpers.snapshot import compare_trees, snapshot_tree
from tests.helpers.trees import CAPABILITY, make_full_tree, make_large_tree, make_sparse_file

CS = 0x10000


def _losetup_for(path: Path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(path)], capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.root("device nodes, chown, trusted.* xattrs in the source tree"))
def full_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("full") / "src"
    info = make_full_tree(root, chunk_size=CS)
    return info


@pytest.fixture(scope="module")
@fixture_needs(*EROFS_MOUNT)
def mkfs_image(full_tree, tmp_path_factory):
    """The full tree minus its 255-byte name, built by mkfs.erofs 1.5 (see module docstring)."""
    work = tmp_path_factory.mktemp("mkfs")
    src = work / "src"
    # cp -a keeps hard links, devices, owners, modes, xattrs/ACLs and ns mtimes
    subprocess.run(["cp", "-a", "--", str(full_tree.root), str(src)], check=True)
    os.unlink(os.path.join(os.fsencode(src), full_tree.long_name))
    meta, blob = work / "meta.img", work / "blob.img"
    r = subprocess.run(
        [
            "mkfs.erofs",
            "--quiet",
            f"--chunksize={CS}",
            f"--blobdev={blob}",
            "--preserve-mtime",
            str(meta),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return src, meta, blob


# -- trees and snapshots --------------------------------------------------------------------------


def test_full_tree_shape(full_tree):
    snap = snapshot_tree(full_tree.root)
    types = {e.type for e in snap.values()}
    assert types == {"reg", "dir", "lnk", "chr", "blk", "fifo"}
    apparent = sum(e.size for e in snap.values() if e.type == "reg")
    assert apparent < 20 * 1024 * 1024
    assert snap[b"one-chunk.bin"].size == CS
    assert snap[b"multi-chunk.bin"].size == 3 * CS + 1234
    assert snap[b"zeros.bin"].size == 4 * CS
    assert snap[b"dup-a.bin"].sha256 == snap[b"dup/dup-b.bin"].sha256
    # the 300+ entry directory needs several 4 KiB dirent blocks (12-byte dirent + name each)
    names = os.listdir(os.path.join(os.fsencode(full_tree.root), b"bigdir"))
    assert len(names) >= 300
    assert sum(12 + len(n) for n in names) > 3 * 4096
    # names sorting before "." exist in the root
    assert {b" sp", b"+plus", b"-dash", b"!bang"} <= set(snap)
    assert len(os.path.basename(full_tree.long_name)) == 255
    for p in full_tree.non_utf8:
        with pytest.raises(UnicodeDecodeError):
            os.path.basename(p).decode("utf-8")
        assert p in snap
    # hard links: three names, one inode; a hard-linked symlink
    inos = {snap[p].ino for p in full_tree.hardlinks}
    assert len(inos) == 1 and snap[full_tree.hardlinks[0]].nlink == 3
    assert len({snap[p].ino for p in full_tree.symlink_hardlinks}) == 1
    assert snap[b"links/long"].target is not None and len(snap[b"links/long"].target) == 300
    assert snap[b"dev/null"].rdev == (1, 3) and snap[b"dev/loop0"].rdev == (7, 0)
    assert snap[b"dev/fifo"].type == "fifo"
    assert snap[b"owners/huge-ids"].uid == 3_000_000_000 and snap[b"owners/big-ids"].gid == 80000
    assert snap[b"modes/setuid"].mode == 0o4755 and snap[b"modes/setgid"].mode == 0o2755
    assert snap[b"modes/sticky"].mode == 0o1777 and snap[b"modes/setgid-dir"].mode == 0o2775
    assert snap[b"times/after-2038"].mtime_ns == 4_000_000_000 * 10**9 + 123_456_789
    assert snap[b"times/one-ns"].mtime_ns == 1
    assert snap[b"xattrs/cap"].xattrs["security.capability"] == CAPABILITY
    assert snap[b"xattrs/user"].xattrs["user.binary"] == bytes(range(256))
    assert snap[b"xattrs/trusted"].xattrs["trusted.foo"] == b"bar"
    assert "system.posix_acl_access" in snap[b"xattrs/acl"].xattrs
    assert "system.posix_acl_default" in snap[b"xattrs/acl-dir"].xattrs
    # the sparse file really has holes
    st = os.lstat(os.path.join(os.fsencode(full_tree.root), full_tree.sparse))
    assert st.st_blocks * 512 < st.st_size // 2


def test_full_tree_is_deterministic(full_tree, tmp_path):
    other = make_full_tree(tmp_path / "again", chunk_size=CS)
    assert compare_trees(full_tree.root, other.root, ignore_fields={"ino"}) == []
    # hard-link grouping is compared as path groups, so it still matches across trees
    assert compare_trees(full_tree.root, other.root) == []


def test_compare_trees_detects_each_kind_of_difference(full_tree, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--", str(full_tree.root), str(copy)], check=True)
    assert compare_trees(full_tree.root, copy) == []
    c = os.fsencode(copy)

    def j(p: bytes) -> bytes:
        return os.path.join(c, p)

    os.chmod(j(b"small.txt"), 0o600)
    os.chown(j(b"empty"), 5, 6)
    os.utime(j(b"one-chunk.bin"), ns=(0, 12345))
    os.setxattr(j(b"xattrs/user"), "user.comment", b"changed")
    with open(j(b"multi-chunk.bin"), "r+b") as f:
        f.write(b"X")
    os.unlink(j(b"links/short"))
    os.symlink(b"elsewhere", j(b"links/short"))
    os.unlink(j(b"hard/other/link2.txt"))
    shutil.copy2(j(b"hard/orig.txt"), j(b"hard/other/link2.txt"))
    os.unlink(j(b"dev/null"))
    os.mknod(j(b"dev/null"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.unlink(j(b"names/caf\xe9"))
    os.mkdir(j(b"extra-dir"))
    d = compare_trees(full_tree.root, copy)
    text = "\n".join(d)
    for needle in [
        "/small.txt: mode",
        "/empty: uid",
        "/empty: gid",
        "/one-chunk.bin: mtime_ns",
        "/xattrs/user: xattrs",
        "/multi-chunk.bin: sha256",
        "/links/short: target",
        "hard link group only in a: /hard/orig.txt, /hard/other/link2.txt, /hardlink3.txt",
        "hard link group only in b: /hard/orig.txt, /hardlink3.txt",
        "/dev/null: rdev (1, 3) != (1, 5)",
        "/names/caf\\xe9: only in a",
        "/extra-dir: only in b",
    ]:
        assert needle in text, f"{needle!r} not reported in:\n{text}"
    # content differences are invisible with check_content=False; root mtime is ignored by default
    assert not any("sha256" in x for x in compare_trees(full_tree.root, copy, check_content=False))
    os.utime(c, ns=(0, 1))
    assert not any(x.startswith("/: ") for x in compare_trees(full_tree.root, copy))
    assert any(
        x.startswith("/: mtime_ns")
        for x in compare_trees(full_tree.root, copy, ignore_root_mtime=False)
    )


def test_make_large_tree_small(tmp_path):
    stats = make_large_tree(tmp_path / "large", total_bytes=2_000_000, nfiles=300, seed=1)
    snap = snapshot_tree(tmp_path / "large", content=False)
    files = [e for e in snap.values() if e.type == "reg"]
    assert stats["files"] == len(files) == 300
    assert stats["bytes"] == sum(e.size for e in files) == 2_000_000
    again = make_large_tree(tmp_path / "large2", total_bytes=2_000_000, nfiles=300, seed=1)
    assert again == stats
    assert compare_trees(tmp_path / "large", tmp_path / "large2", ignore_fields={"mtime_ns"}) == []


# -- EROFS oracle: mkfs.erofs image through the kernel and fsck.erofs ------------------------------


def test_mkfs_erofs_image_mounts_equal_to_source(mkfs_image, tmp_path):
    src, meta, blob = mkfs_image
    with mount_erofs(meta, [blob], tmp_path / "mnt") as mp:
        assert compare_trees(src, mp) == []
        # st_ino is the nid; hard links share it
        a = os.lstat(mp / "hard/orig.txt")
        b = os.lstat(mp / "hardlink3.txt")
        assert a.st_ino == b.st_ino and a.st_nlink == 3
    assert not (tmp_path / "mnt").exists() or not os.path.ismount(tmp_path / "mnt")
    assert _losetup_for(meta) == "" and _losetup_for(blob) == ""


def test_mkfs_erofs_metadata_only_mount(mkfs_image, tmp_path):
    src, meta, _blob = mkfs_image
    with mount_erofs(meta, [], tmp_path / "mnt") as mp:
        assert compare_trees(src, mp, check_content=False) == []
    assert _losetup_for(meta) == ""


def test_fsck_erofs_and_extract(mkfs_image, tmp_path):
    src, meta, blob = mkfs_image
    rc, out = fsck_erofs(meta, device=blob)
    assert rc == 0, out
    rc, out = fsck_erofs(meta)  # the extra device is required
    assert rc != 0 and "device" in out
    rc, out = fsck_erofs(meta, device=blob, extract=tmp_path / "out")
    assert rc == 0, out
    diffs = compare_trees(
        src, tmp_path / "out", check_xattrs=False, ignore_fields={"ino"}, mode_mask=0o1777
    )
    assert diffs == []


@marked(*EROFS_MOUNT)
def test_mount_failure_cleans_up(tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(MountError, match="mount -t erofs"):
        with mount_erofs(junk, [], tmp_path / "mnt"):
            pass
    assert _losetup_for(junk) == ""
    assert not (tmp_path / "mnt").exists()


@pytest.mark.root("loop devices")
@pytest.mark.tools("losetup")
def test_loop_device_detached_after_exception(tmp_path):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(4096))
    with pytest.raises(RuntimeError, match="boom"), loop_device(img) as dev:
        assert dev.startswith("/dev/loop")
        assert str(img) in _losetup_for(img)
        raise RuntimeError("boom")
    assert _losetup_for(img) == ""


# -- tar layers and the overlayfs reference view ----------------------------------------------------


def test_layer_writer_headers(tmp_path):
    long_name = "d/" + "n" * 150
    members = [
        D("d"),
        F(long_name, b"long\n"),
        F("big-uid", b"", uid=3_000_000, gid=2_097_152),
        F("x", b"", xattrs={"security.capability": CAPABILITY, "user.a": b"\xff\xfe"}),
        F(b"caf\xe9", b""),
        H("hl", "x"),
        L("sl", "x"),
        whiteout("d/gone"),
        opaque("d"),
    ]
    raw = layer_bytes(members, "pax")
    # raw binary xattr values, no hdrcharset (like Go's archive/tar)
    assert b"SCHILY.xattr.security.capability=" + CAPABILITY + b"\n" in raw
    assert b"SCHILY.xattr.user.a=\xff\xfe\n" in raw
    assert b"path=caf\xe9\n" in raw and b"hdrcharset" not in raw
    assert b"uid=3000000\n" in raw and b"gid=2097152\n" in raw
    p = tmp_path / "l.tar"
    p.write_bytes(raw)
    with tarfile.open(p, encoding="utf-8", errors="surrogateescape") as tf:
        names = tf.getnames()
        assert names == [
            "d",
            long_name,
            "big-uid",
            "x",
            "caf\udce9",
            "hl",
            "sl",
            "d/.wh.gone",
            "d/.wh..wh..opq",
        ]
        x = tf.getmember("x")
        assert (
            x.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
            == CAPABILITY
        )
        assert tf.getmember("big-uid").uid == 3_000_000
        assert tf.getmember("hl").islnk() and tf.getmember("hl").linkname == "x"
    gnu = layer_bytes([D("d"), F(long_name, b"long\n"), F("u", uid=3_000_000)], "gnu")
    assert b"././@LongLink" in gnu
    with pytest.raises(ValueError, match="pax"):
        layer_bytes([F("x", xattrs={"user.a": b"1"})], "gnu")
    gz = write_layer(tmp_path / "l.tar.gz", members, compress="gzip")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert (
        write_layer(tmp_path / "l2.tar.gz", members, compress="gzip").read_bytes()
        == gz.read_bytes()
    )


@pytest.mark.root("whiteouts are char 0:0 devices, opaque dirs a trusted.* xattr")
def test_unpack_layer_converts_whiteouts(tmp_path):
    tar = write_layer(
        tmp_path / "l.tar",
        [
            D("d", mode=0o750, uid=7, gid=8, mtime=1_500_000_000),
            F("d/f", b"data", mode=0o4755, uid=9, xattrs={"security.capability": CAPABILITY}),
            whiteout("d/gone"),
            opaque("d"),
            H("d/hl", "d/f"),
            CHR("c", 1, 3),
            F("pax-ns", b"", pax={"mtime": "1600000000.123456789"}),
        ],
    )
    out = unpack_layer(tar, tmp_path / "out")
    b = os.fsencode(out)
    st = os.lstat(os.path.join(b, b"d/gone"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(os.path.join(b, b"d"), OPAQUE_XATTR) == b"y"
    f = os.lstat(os.path.join(b, b"d/f"))
    assert (f.st_uid, stat.S_IMODE(f.st_mode), f.st_nlink) == (9, 0o4755, 2)
    assert os.getxattr(os.path.join(b, b"d/f"), "security.capability") == CAPABILITY
    d = os.lstat(os.path.join(b, b"d"))
    assert (d.st_uid, d.st_gid, stat.S_IMODE(d.st_mode), d.st_mtime_ns) == (
        7,
        8,
        0o750,
        1_500_000_000 * 10**9,
    )
    assert os.lstat(os.path.join(b, b"pax-ns")).st_mtime_ns == 1_600_000_000_123_456_789
    with pytest.raises(ValueError, match="escapes"):
        unpack_layer(write_layer(tmp_path / "bad.tar", [F("../evil")]), tmp_path / "out2")


@marked(*OVERLAY_MOUNT)
def test_overlay_view_of_three_layers(tmp_path):
    tars = write_three_layers(tmp_path / "tars", chunk_size=CS)
    with overlay_view(tars, tmp_path / "mnt") as view:
        snap = snapshot_tree(view)
        present = set(snap)
        # layer 2: .wh.hosts deletes etc/hosts; etc/hostname file -> symlink
        assert b"etc/hosts" not in present
        assert (
            snap[b"etc/hostname"].type == "lnk"
            and snap[b"etc/hostname"].target == b"/proc/sys/kernel/hostname"
        )
        assert snap[b"etc/newfile"].type == "reg"
        # layer 2: var/cache opaque -> only its own child remains
        assert sorted(p for p in present if p.startswith(b"var/cache/")) == [b"var/cache/new"]
        assert snap[b"var/cache"].mode == 0o750
        assert OPAQUE_XATTR not in snap[b"var/cache"].xattrs
        # layer 3: opt deleted, etc/passwd a dir, var/lib a file, libfoo.so symlink deleted
        assert not any(p == b"opt" or p.startswith(b"opt/") for p in present)
        assert snap[b"etc/passwd"].type == "dir" and snap[b"etc/passwd/inside"].type == "reg"
        assert snap[b"var/lib"].type == "reg" and b"var/lib/state" not in present
        assert b"usr/lib/libfoo.so" not in present and b"usr/lib/libfoo.so.1" in present
        # bin/sh rewritten in layer 3, bin/ls keeps layer 1's content
        assert snap[b"bin/sh"].sha256 != snap[b"bin/ls"].sha256
        assert snap[b"bin/ls"].size == 2 * CS + 100
        # no whiteout artefacts are visible
        assert not any(os.path.basename(p).startswith(b".wh.") for p in present)
        assert not any(e.type == "chr" and e.rdev == (0, 0) for e in snap.values())
        assert b"tmp/never-existed" not in present
        assert snap[b"home/caf\xe9"].type == "reg"
        assert snap[b"usr/bin/ping"].mode == 0o4755
        assert snap[b"usr/bin/ping"].xattrs == {
            "security.capability": CAPABILITY,
            "user.note": b"hi \xff\x00 there",
        }
        assert snap[b"home/bigid"].uid == 3_000_000 and snap[b"dev/loop0"].rdev == (7, 0)
        # directory attributes come from the top-most layer holding the directory
        assert snap[b"etc"].mtime_ns == 1_700_000_000 * 10**9
    assert not os.path.ismount(tmp_path / "mnt")
    assert len(three_layer_members()) == 3


def test_run_measured_reports_child_peak_rss():
    import sys

    big = run_measured(
        [
            sys.executable,
            "-c",
            "b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])",
        ]
    )
    assert big.returncode == 0, big.stderr
    assert big.maxrss_bytes > 200 * 1024 * 1024
    # the floor is the tiny wrapper, not this (big) pytest process
    ballast = bytearray(150 * 1024 * 1024)
    ballast[::4096] = b"y" * len(ballast[::4096])
    small = run_measured(["true"])
    del ballast
    assert small.returncode == 0 and 0 < small.maxrss_bytes < 30 * 1024 * 1024
    killed = run_measured(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    )
    assert killed.returncode == 128 + 9
    with pytest.raises(subprocess.TimeoutExpired):
        run_measured(["sleep", "30"], timeout=0.5)
    fail = run_measured([sys.executable, "-c", "import sys; print('out'); sys.exit('err')"])
    assert fail.returncode == 1 and fail.stdout == "out\n" and fail.stderr == "err\n"


def test_make_sparse_file(tmp_path):
    p = tmp_path / "s"
    make_sparse_file(p, 64 * 1024 * 1024, {0: b"a", 32 * 1024 * 1024: b"b"})
    st = os.stat(p)
    assert st.st_size == 64 * 1024 * 1024 and st.st_blocks * 512 <= 1024 * 1024
    with open(p, "rb") as f:
        f.seek(32 * 1024 * 1024)
        assert f.read(2) == b"b\x00"
