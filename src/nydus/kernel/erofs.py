"""Mount a RAFS v6 bootstrap with the kernel's EROFS, one `device=` per blob.

Two ways, the first the kernel supports wins (`method="auto"`):

* "file": mount(2) with the bootstrap as the source and the blob files as `device=`
  (kernels >= 6.12 built with CONFIG_EROFS_FS_BACKED_BY_FILE). mount(8) cannot do this:
  it turns a regular-file source into a loop device and then refuses a regular-file device.
* "loop": read-only autoclear loop devices over the bootstrap and each blob file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from nydus.kernel import loop
from nydus.kernel.mounts import (
    MS_NOATIME,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MountError,
    mount,
    unmount,
)

__all__ = ["METHODS", "ErofsMount", "erofs_available", "mount_erofs"]

log = logging.getLogger(__name__)

METHODS = ("auto", "file", "loop")
FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME
#: errnos with which a kernel refuses a regular file as an EROFS source or device
_NOT_FILE_BACKED = (errno.ENOTBLK, errno.EINVAL, errno.ENODEV)


def erofs_available() -> bool:
    """Whether the running kernel has the EROFS filesystem (built in or loaded)."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["erofs"] for line in f)
    except OSError:
        return False


@dataclass
class ErofsMount:
    """A mounted bootstrap: where, how ("file" or "loop"), and the loop devices used."""

    target: str
    method: str
    loops: list[str] = field(default_factory=list)

    def unmount(self, lazy_fallback: bool = True) -> None:
        """Unmount; when busy (open files), detach lazily. The loop devices go with the
        mount (autoclear); any still attached are detached."""
        try:
            unmount(self.target)
        except MountError as exc:
            if exc.errno == errno.EINVAL:  # not mounted any more
                pass
            elif exc.errno == errno.EBUSY and lazy_fallback:
                log.info("%s is busy: detaching it lazily", self.target)
                unmount(self.target, lazy=True)
            else:
                raise
        for dev in self.loops:
            if loop.backing_file(dev) is not None:
                with contextlib.suppress(MountError):
                    loop.detach(dev)


def _options(devices: Sequence[str], extra: str) -> str:
    opts = [f"device={d}" for d in devices]
    if extra:
        opts.append(extra)
    return ",".join(opts)


def mount_erofs(
    bootstrap: str,
    devices: Sequence[str],
    target: str,
    method: str = "auto",
    options: str = "",
) -> ErofsMount:
    """Mount `bootstrap` at `target` read-only with `devices` (blob-table order)."""
    if method not in METHODS:
        raise ValueError(f"unknown EROFS mount method {method!r}")
    if not erofs_available():
        raise MountError("the kernel has no EROFS filesystem (modprobe erofs?)", errno.ENODEV)
    bootstrap = os.path.abspath(bootstrap)
    devices = [os.path.abspath(d) for d in devices]
    if method in ("auto", "file"):
        try:
            mount(bootstrap, target, "erofs", FLAGS, _options(devices, options))
            return ErofsMount(target, "file")
        except MountError as exc:
            if method == "file" or exc.errno not in _NOT_FILE_BACKED:
                raise
            log.info("file-backed EROFS refused (%s): using loop devices", exc)
    return _mount_loop(bootstrap, devices, target, options)


def _mount_loop(bootstrap: str, devices: Sequence[str], target: str, options: str) -> ErofsMount:
    loops: list[loop.LoopDevice] = []
    try:
        for path in (bootstrap, *devices):
            loops.append(loop.attach(path))
        mount(
            loops[0].path, target, "erofs", FLAGS, _options([lp.path for lp in loops[1:]], options)
        )
    except BaseException:
        for lp in loops:
            lp.release()  # autoclear: never mounted, so closing detaches it
            with contextlib.suppress(MountError):
                if loop.backing_file(lp.path) is not None:
                    loop.detach(lp.path)
        raise
    for lp in loops:
        lp.release()
    return ErofsMount(target, "loop", [lp.path for lp in loops])
