"""What this project asks of the Linux kernel directly: mount detection and unmounting.

The one helper that the daemon, the converter's check, tests and benchmarks share (and, later,
mount(2) of EROFS images and loop devices).
"""

from nydus.kernel.mounts import (
    Mount,
    MountError,
    find_mount,
    is_mounted,
    mount_device,
    mounts,
    parse_mountinfo,
    unescape,
    unmount,
    unmount_all,
)

__all__ = [
    "Mount",
    "MountError",
    "find_mount",
    "is_mounted",
    "mount_device",
    "mounts",
    "parse_mountinfo",
    "unescape",
    "unmount",
    "unmount_all",
]
