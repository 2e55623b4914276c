"""Mount detection from mountinfo and unmounting: parsing, then real tmpfs mounts."""

from __future__ import annotations

import os
import subprocess

import pytest

from nydus.kernel import (
    MountError,
    find_mount,
    is_mounted,
    mount_device,
    parse_mountinfo,
    unescape,
    unmount,
    unmount_all,
)

SAMPLE = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"40 22 0:35 / /tmp/a\\040b\\134c\\012d rw,nosuid master:3 shared:9 - fuse nydusfs rw,user_id=0\n"
    b"41 40 0:36 /sub /tmp/a\\040b\\134c\\012d ro - erofs /dev/loop3 ro,user_xattr\n"
    b"42 22 0:37 / /srv\\0409 rw - tmpfs none rw\n"
)


def test_parse_and_unescape():
    ms = parse_mountinfo(SAMPLE)
    assert [m.mount_id for m in ms] == [22, 40, 41, 42]
    fuse, erofs = ms[1], ms[2]
    assert fuse.mountpoint == "/tmp/a b\\c\nd"
    assert (fuse.device, fuse.fstype, fuse.source, fuse.is_fuse) == (
        "0:35",
        "fuse",
        "nydusfs",
        True,
    )
    assert fuse.options == "rw,nosuid" and fuse.super_options == "rw,user_id=0"
    assert (erofs.root, erofs.fstype, erofs.source, erofs.is_fuse) == (
        "/sub",
        "erofs",
        "/dev/loop3",
        False,
    )
    assert ms[3].mountpoint == "/srv 9"  # only three octal digits are an escape
    assert unescape(b"x\\9999") == "x\\9999"


def test_malformed_line():
    with pytest.raises(MountError, match="line 2"):
        parse_mountinfo(b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n23 1 8:1 / /x rw\n")


def test_not_a_mountpoint(tmp_path):
    assert not is_mounted(tmp_path)
    assert find_mount(tmp_path) is None and mount_device(tmp_path) is None
    with pytest.raises(MountError, match="cannot unmount"):
        unmount(tmp_path)
    assert unmount_all(tmp_path)


def _tmpfs(path):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(path)], check=True)


def test_stacked_busy_mounts_at_an_escaped_path(tmp_path, require_root):
    mnt = tmp_path / "a b\\c"
    mnt.mkdir()
    try:
        _tmpfs(mnt)
        first = mount_device(mnt)
        st = os.stat(mnt)
        assert first == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        _tmpfs(mnt)
        top = find_mount(mnt)
        assert top is not None and top.fstype == "tmpfs" and top.device != first
        st = os.stat(mnt)
        assert top.device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"  # the topmost
        unmount(mnt)
        assert mount_device(mnt) == first
        (mnt / "f").write_text("x")
        with open(mnt / "f") as busy:  # a plain unmount fails (EBUSY); a lazy one detaches
            assert unmount_all(mnt)
            assert busy.read() == "x"
        assert not is_mounted(mnt)
    finally:
        unmount_all(mnt)


def test_mountpoints_under_deepest_first(tmp_path, require_root):
    from nydus.kernel.mounts import mountpoints_under

    outer, beside = tmp_path / "t", tmp_path / "tx"  # a sibling sharing the name's prefix
    beside.mkdir()
    outer.mkdir()
    try:
        _tmpfs(outer)
        (outer / "in").mkdir()
        _tmpfs(outer / "in")
        _tmpfs(beside)
        assert mountpoints_under(outer) == [str(outer / "in"), str(outer)]
        assert mountpoints_under(outer / "in") == [str(outer / "in")]
        assert mountpoints_under(tmp_path / "none") == []
    finally:
        for mp in (outer / "in", outer, beside):
            unmount_all(mp)
