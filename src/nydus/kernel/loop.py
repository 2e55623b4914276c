"""Read-only loop devices: attach a file (LOOP_CONFIGURE), detach, find by backing file.

Devices are attached with autoclear: the kernel detaches one by itself when its last user
(the mount over it) goes away, so even a daemon killed with SIGKILL leaves no loop device
once its mount is removed. Keep the `LoopDevice` open until the mount holds the device:
closing the only opener of an autoclear device that is not mounted detaches it.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import struct
from dataclasses import dataclass

from nydus.kernel.mounts import MountError

__all__ = ["LoopDevice", "attach", "backing_file", "detach", "loops_backed_by"]

log = logging.getLogger(__name__)

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
#: struct loop_info64: device, inode, rdevice, offset, sizelimit (u64), number,
#: encrypt_type, encrypt_key_size, flags (u32), file_name[64], crypt_name[64],
#: encrypt_key[32], init[2] (u64)
LOOP_INFO64 = struct.Struct(f"<QQQQQIIII{LO_NAME_SIZE}s{LO_NAME_SIZE}s32sQQ")
#: struct loop_config: fd u32, block_size u32, loop_info64, reserved[8] u64
LOOP_CONFIG_HEAD = struct.Struct("<II")
LOOP_CONFIG_SIZE = LOOP_CONFIG_HEAD.size + LOOP_INFO64.size + 64


@dataclass
class LoopDevice:
    """An attached loop device and the descriptor that keeps it from autoclearing."""

    path: str
    backing: str
    fd: int = -1

    def release(self) -> None:
        """Close our descriptor (after the mount holds the device)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _config(file_fd: int, name: str, flags: int) -> bytes:
    info = LOOP_INFO64.pack(
        0, 0, 0, 0, 0, 0, 0, 0, flags, os.fsencode(name)[-LO_NAME_SIZE + 1 :], b"", b"", 0, 0
    )
    return (LOOP_CONFIG_HEAD.pack(file_fd, 0) + info).ljust(LOOP_CONFIG_SIZE, b"\0")


def attach(path: str, autoclear: bool = True) -> LoopDevice:
    """Attach `path` read-only to a free loop device; MountError naming it otherwise."""
    path = os.path.abspath(path)
    flags = LO_FLAGS_READ_ONLY | (LO_FLAGS_AUTOCLEAR if autoclear else 0)
    try:
        file_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(f"loop device for {path}: {exc.strerror}", exc.errno or errno.EIO) from exc
    try:
        try:
            ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise MountError(
                f"loop device for {path}: /dev/loop-control: {exc.strerror}", exc.errno or errno.EIO
            ) from exc
        try:
            for _ in range(16):  # another process may take the free device first
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                try:
                    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    _configure(fd, file_fd, path, flags)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno == errno.EBUSY:
                        continue
                    raise MountError(
                        f"loop device for {path}: {dev}: {exc.strerror}", exc.errno or errno.EIO
                    ) from exc
                log.debug("attached %s to %s", path, dev)
                return LoopDevice(dev, path, fd)
            raise MountError(f"loop device for {path}: no free loop device", errno.EBUSY)
        finally:
            os.close(ctl)
    finally:
        os.close(file_fd)


def _configure(fd: int, file_fd: int, path: str, flags: int) -> None:
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, _config(file_fd, path, flags))
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):  # kernels before 5.8 lack it
            raise
    fcntl.ioctl(fd, LOOP_SET_FD, file_fd)
    info = LOOP_INFO64.pack(
        0, 0, 0, 0, 0, 0, 0, 0, flags & LO_FLAGS_AUTOCLEAR, os.fsencode(path)[-63:], b"", b"", 0, 0
    )
    try:
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(fd, LOOP_CLR_FD)
        raise


def detach(dev: str) -> None:
    """Detach a loop device (a busy one is detached by the kernel when its user goes)."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(f"detach {dev}: {exc.strerror}", exc.errno or errno.EIO) from exc
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # not attached (any more)
            raise MountError(f"detach {dev}: {exc.strerror}", exc.errno or errno.EIO) from exc
    finally:
        os.close(fd)


def backing_file(dev: str) -> str | None:
    """The file behind loop device `dev` (/dev/loopN), None when it is not attached."""
    name = os.path.basename(dev)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def loops_backed_by(prefix: str) -> list[str]:
    """Loop devices whose backing file is `prefix` or lies under the directory `prefix`."""
    prefix = os.path.abspath(prefix)
    out = []
    for p in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        try:
            with open(p) as f:
                back = f.read().rstrip("\n")
        except OSError:
            continue
        if back == prefix or back.startswith(prefix.rstrip("/") + "/"):
            out.append("/dev/" + p.split("/")[3])
    return out
