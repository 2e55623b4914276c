"""Read-only autoclear loop devices: attach, read through, find by backing file, detach."""

from __future__ import annotations

import fcntl
import os
import struct
import time

import pytest

from nydus.kernel import loop
from nydus.kernel.mounts import MountError

pytestmark = pytest.mark.root("loop devices")


def _gone(dev: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loop.backing_file(dev) is None:
            return True
        time.sleep(0.05)
    return False


def test_attach_reads_through_and_autoclears(tmp_path, require_root):
    f = tmp_path / "file.img"
    data = os.urandom(64 * 1024)
    f.write_bytes(data)
    lp = loop.attach(str(f))
    try:
        assert loop.backing_file(lp.path) == str(f)
        assert loop.loops_backed_by(str(tmp_path)) == [lp.path]
        with open(lp.path, "rb") as dev:
            assert dev.read() == data
        with open(lp.path, "rb") as dev:  # BLKROGET: the device is read-only
            ro = fcntl.ioctl(dev.fileno(), 0x125E, struct.pack("i", 0))
        assert struct.unpack("i", ro) == (1,)
    finally:
        lp.release()  # the only opener: an autoclear device goes with it
    assert _gone(lp.path)
    assert loop.loops_backed_by(str(tmp_path)) == []


def test_detach_without_autoclear(tmp_path, require_root):
    f = tmp_path / "file.img"
    f.write_bytes(bytes(8192))
    lp = loop.attach(str(f), autoclear=False)
    lp.release()
    assert loop.backing_file(lp.path) == str(f)
    loop.detach(lp.path)
    assert _gone(lp.path)


def test_attach_errors_name_the_file(tmp_path, require_root):
    with pytest.raises(MountError, match="missing.img"):
        loop.attach(str(tmp_path / "missing.img"))
