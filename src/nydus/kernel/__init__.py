"""What this project asks of the Linux kernel directly: the one helper that the daemon, the
converter's check, tests and benchmarks share.

`mounts`: mount detection (mountinfo), mount(2), unmounting, dead-mount clean-up; `loop`:
read-only autoclear loop devices; `erofs`: a bootstrap mounted by the kernel's EROFS with
one device per blob, file-backed or over loop devices.
"""

from nydus.kernel.mounts import (
    Mount,
    MountError,
    clear_dead_mounts,
    find_mount,
    is_dead,
    is_mounted,
    mount,
    mount_device,
    mounts,
    mounts_at,
    parse_mountinfo,
    unescape,
    unmount,
    unmount_all,
)

__all__ = [
    "Mount",
    "MountError",
    "clear_dead_mounts",
    "find_mount",
    "is_dead",
    "is_mounted",
    "mount",
    "mount_device",
    "mounts",
    "mounts_at",
    "parse_mountinfo",
    "unescape",
    "unmount",
    "unmount_all",
]
