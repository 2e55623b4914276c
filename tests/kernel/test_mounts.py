"""Mount detection from mountinfo, mount(2) and unmounting: parsing, then real tmpfs mounts;
removing dead FUSE mounts stacked on a path."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from nydus.kernel import (
    MountError,
    clear_dead_mounts,
    find_mount,
    is_dead,
    is_mounted,
    mount,
    mount_device,
    mounts_at,
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


#: a FUSE "server" that mounts and then never answers: SIGKILL leaves a dead mount
_DEAD_SERVER = """
import os, sys, time
from nydus.kernel.mounts import mount
fd = os.open("/dev/fuse", os.O_RDWR)
mount("deadfs", sys.argv[1], "fuse", 1, f"fd={fd},rootmode=40000,user_id=0,group_id=0")
print("mounted", flush=True)
time.sleep(60)
"""


def _dead_mount(path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", _DEAD_SERVER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "mounted"
    p.send_signal(signal.SIGKILL)
    p.wait(10)


def test_mount_errors_name_the_reason(tmp_path, require_root):
    with pytest.raises(MountError) as exc:
        mount(str(tmp_path / "nothere"), str(tmp_path), "erofs", 1)
    assert exc.value.errno == errno.ENOENT and "nothere" in str(exc.value)
    with pytest.raises(MountError) as exc:
        unmount(str(tmp_path))
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(MountError, match="4096"):
        mount("x", str(tmp_path), "erofs", 1, "device=" + "a" * 5000)


def test_tmpfs_mount_is_seen_then_gone(tmp_path, require_root):
    mnt = tmp_path / "m"
    mnt.mkdir()
    mount("nydus-test", str(mnt), "tmpfs", 0, "size=1m")
    try:
        (top,) = mounts_at(str(mnt))
        assert (top.fstype, top.source) == ("tmpfs", "nydus-test") and not is_dead(str(mnt))
    finally:
        unmount(str(mnt))
    assert not is_mounted(str(mnt))


def test_dead_fuse_mounts_stacked_on_a_path_are_all_removed(tmp_path, require_root):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert clear_dead_mounts(str(mnt)) == 0
    for _ in range(3):
        _dead_mount(mnt)
    assert len(mounts_at(str(mnt))) == 3 and is_dead(str(mnt))
    assert clear_dead_mounts(str(mnt)) == 3
    assert not is_mounted(str(mnt)) and os.path.isdir(mnt)


def test_a_live_mount_under_a_dead_one_is_kept(tmp_path, require_root):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount("nydus-live", str(mnt), "tmpfs", 0, "size=1m")
    try:
        _dead_mount(mnt)
        assert clear_dead_mounts(str(mnt)) == 1
        (top,) = mounts_at(str(mnt))
        assert top.source == "nydus-live" and not is_dead(str(mnt))
    finally:
        unmount(str(mnt))
