"""The FUSE server on a real mount (in this process): what the kernel shows, what it
caches (directory listings and file pages stay in the kernel: FOPEN_CACHE_DIR and
FOPEN_KEEP_CACHE), a killed reader, and both ways a session ends."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from nydus.fuse import FuseSession
from nydus.kernel.mounts import is_mounted, unmount

from .memfs import CONTENT, MANY, XATTRS, MemFs

pytestmark = [pytest.mark.root("FUSE mounts"), pytest.mark.kernel("fuse")]


@pytest.fixture
def mounted(tmp_path):
    fs = MemFs()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = FuseSession(fs, str(mnt), threads=2, fsname="memfs")
    s.mount()
    assert s.ready.wait(10)
    yield fs, s, mnt
    fs.slow_release.set()
    s.close()
    assert not is_mounted(str(mnt))


def test_what_the_kernel_shows(mounted):
    fs, _s, mnt = mounted
    st = os.stat(mnt / "file")
    assert (st.st_ino, st.st_size, st.st_uid, st.st_gid) == (2, len(CONTENT), 1000, 1000)
    assert st.st_mode == stat.S_IFREG | 0o644 and st.st_mtime_ns == 1_600_000_000 * 10**9 + 7
    assert sorted(os.listdir(mnt)) == ["bad", "boom", "dir", "file", "link", "slow"]
    assert sorted(os.listdir(mnt / "dir")) == sorted(f"f{i}" for i in range(MANY))
    assert os.stat(mnt / "dir" / "f7").st_size == 7
    assert os.readlink(mnt / "link") == "file"
    assert (mnt / "file").read_bytes() == CONTENT
    assert (mnt / "link").read_bytes() == CONTENT
    assert sorted(os.listxattr(mnt / "file")) == sorted(n.decode() for n in XATTRS)
    assert os.getxattr(mnt / "file", "user.big") == b"x" * 300
    with pytest.raises(OSError) as exc:
        os.getxattr(mnt / "file", "user.none")
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "missing")
    assert os.statvfs(mnt).f_namemax == 255


def test_errors_and_refused_writes(mounted):
    _fs, _s, mnt = mounted
    for fn in (
        lambda: open(mnt / "file", "r+b"),
        lambda: open(mnt / "new", "wb"),
        lambda: os.mkdir(mnt / "d"),
        lambda: os.unlink(mnt / "file"),
        lambda: os.chmod(mnt / "file", 0o600),
        lambda: os.setxattr(mnt / "file", "user.x", b"1"),
    ):
        with pytest.raises(OSError) as exc:
            fn()
        assert exc.value.errno == errno.EROFS
    for name in ("bad", "boom"):
        with pytest.raises(OSError) as exc:
            (mnt / name).read_bytes()
        assert exc.value.errno == errno.EIO
    assert (mnt / "file").read_bytes()[:4] == CONTENT[:4]  # still serving


def test_listings_and_pages_stay_in_the_kernel(mounted):
    fs, _s, mnt = mounted
    os.listdir(mnt / "dir")
    listed = fs.calls["readdirplus"] + fs.calls["readdir"]
    assert listed >= 2  # 300 entries: several pages
    for _ in range(3):
        assert len(os.listdir(mnt / "dir")) == MANY
    assert fs.calls["readdirplus"] + fs.calls["readdir"] == listed
    (mnt / "file").read_bytes()
    reads = fs.calls["read"]
    assert reads >= 1
    for _ in range(3):
        assert (mnt / "file").read_bytes() == CONTENT
    assert fs.calls["read"] == reads
    getattrs = fs.calls["getattr"]
    for _ in range(3):
        os.stat(mnt / "dir" / "f5")
    assert fs.calls["getattr"] == getattrs  # attributes came with the listing (readdirplus)


def test_a_killed_reader_does_not_wait_for_a_stalled_read(mounted):
    fs, _s, mnt = mounted
    p = subprocess.Popen([sys.executable, "-c", f"open({str(mnt / 'slow')!r}, 'rb').read()"])
    assert fs.slow_started.wait(10)
    t0 = time.monotonic()
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert time.monotonic() - t0 < 2.0
    assert (mnt / "file").read_bytes()[:8] == CONTENT[:8]


def test_an_external_unmount_ends_the_session(tmp_path):
    fs = MemFs()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = FuseSession(fs, str(mnt), fsname="memfs")
    ended = []
    s.on_end = lambda: ended.append(True)
    s.mount()
    assert os.listdir(mnt)
    unmount(str(mnt))
    assert s.ended.wait(10) and ended == [True]
    s.close()  # nothing left to do, and no error
    assert not is_mounted(str(mnt))


def test_close_with_a_file_open_detaches_and_ends(tmp_path):
    fs = MemFs()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = FuseSession(fs, str(mnt), fsname="memfs")
    s.mount()
    fd = os.open(mnt / "file", os.O_RDONLY)
    try:
        t0 = time.monotonic()
        s.close()
        assert not is_mounted(str(mnt)) and time.monotonic() - t0 < 2
        assert s.ended.wait(10)
        with pytest.raises(OSError) as exc:
            os.pread(fd, 10, 200_000)  # not cached: the connection is gone
        assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
    finally:
        with contextlib.suppress(OSError):  # close(2) itself may report the lost connection
            os.close(fd)


class _Buggy(MemFs):
    """MemFs whose operations named in `explode` fail as a bug would (no NydusError, no
    OSError); nothing is cached by the kernel, so every call reaches the session."""

    entry_timeout = 0.0
    attr_timeout = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.explode: set[str] = set()

    def _maybe(self, op: str) -> None:
        if op in self.explode:
            raise RuntimeError(f"injected bug in {op}")

    def opendir(self, node: int) -> tuple[int, int]:
        self._maybe("opendir")
        return super().opendir(node)[0], 0  # no FOPEN_CACHE_DIR: every listing is asked


def _buggy(op: str):  # type: ignore[no-untyped-def]
    base = getattr(MemFs, op)

    def method(self, *args):  # type: ignore[no-untyped-def]
        self._maybe(op)
        return base(self, *args)

    return method


for _op in ("lookup", "getattr", "readlink", "open", "read", "readdir", "statfs", "getxattr"):
    setattr(_Buggy, _op, _buggy(_op))
_Buggy.listxattr = _buggy("listxattr")  # type: ignore[method-assign]


def test_a_bug_in_any_handler_is_eio_with_a_traceback_and_the_mount_lives(tmp_path, caplog):
    """Whatever a handler raises, the kernel gets EIO, the log gets one ERROR line with the
    traceback, and the next request is served (the session's one wrapper, `_run`)."""
    fs = _Buggy()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = FuseSession(fs, str(mnt), threads=2, fsname="buggy")
    s.mount()
    try:
        assert s.ready.wait(10)
        fd = os.open(mnt / "file", os.O_RDONLY)
        calls = {
            "lookup": lambda: os.stat(mnt / "file"),
            "getattr": lambda: os.stat(mnt),
            "readlink": lambda: os.readlink(mnt / "link"),
            "open": lambda: os.close(os.open(mnt / "file", os.O_RDONLY)),
            "read": lambda: os.pread(fd, 100, 0),
            "opendir": lambda: os.listdir(mnt / "dir"),
            "readdir": lambda: os.listdir(mnt / "dir"),
            "statfs": lambda: os.statvfs(mnt),
            "getxattr": lambda: os.getxattr(mnt / "file", "user.one"),
            "listxattr": lambda: os.listxattr(mnt / "file"),
        }
        for op, call in calls.items():
            caplog.clear()
            fs.explode = {op}
            with caplog.at_level(logging.ERROR, logger="nydus.fuse.session"):
                with pytest.raises(OSError) as exc:
                    call()
            assert exc.value.errno == errno.EIO, op
            rec = [r for r in caplog.records if r.getMessage().startswith("unexpected error in")]
            assert rec and all(r.exc_info for r in rec), (op, caplog.records)  # the kernel
            assert f"injected bug in {op}" in str(rec[0].exc_info[1])  # may retry a lookup
            assert "Traceback" in caplog.text and "in _maybe" in caplog.text
            fs.explode = set()
            call()  # served again: the session lives
        os.close(fd)
        assert (mnt / "file").read_bytes() == CONTENT
        assert not s.ended.is_set() and is_mounted(str(mnt))
    finally:
        s.close()
    assert not is_mounted(str(mnt))
