"""Kernel EROFS and erofs-utils as oracles: loop devices, mounts, fsck.erofs.

All context managers clean up whatever they set up, also when the body raises; a failing
cleanup step is retried and then reported, never silently leaked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "MountError",
    "dump_erofs",
    "fsck_erofs",
    "have_erofs_tools",
    "kernel_has",
    "loop_device",
    "mount_erofs",
    "mount_overlay",
    "umount",
]

PathLike = str | os.PathLike[str]


class MountError(RuntimeError):
    """A mount or loop set-up failed; the message carries the command output and dmesg tail."""


def have_erofs_tools() -> bool:
    return all(shutil.which(t) for t in ("mkfs.erofs", "fsck.erofs", "dump.erofs"))


def kernel_has(fstype: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == fstype for line in f if line.strip())
    except OSError:
        return False


def _run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, errors="replace", **kw)


def _dmesg_tail(n: int = 8) -> str:
    try:
        out = _run(["dmesg"]).stdout.splitlines()
    except OSError:
        return ""
    return "\n".join(out[-n:])


@contextlib.contextmanager
def loop_device(path: PathLike) -> Iterator[str]:
    """Attach ``path`` read-only to a free loop device (``losetup -f --show -r``); detach at exit."""
    r = _run(["losetup", "-f", "--show", "-r", os.fspath(path)])
    if r.returncode != 0 or not r.stdout.strip():
        raise MountError(f"losetup {path}: rc {r.returncode}: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        for attempt in range(20):
            d = _run(["losetup", "-d", dev])
            if d.returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            raise MountError(f"losetup -d {dev}: {d.stderr.strip()}")


def umount(mountpoint: PathLike) -> None:
    """Unmount, retrying on EBUSY, falling back to a lazy unmount."""
    mp = os.fspath(mountpoint)
    for attempt in range(10):
        r = _run(["umount", mp])
        if r.returncode == 0:
            return
        if "not mounted" in r.stderr:
            return
        time.sleep(0.1 * (attempt + 1))
    r = _run(["umount", "-l", mp])
    if r.returncode != 0:
        raise MountError(f"umount {mp}: {r.stderr.strip()}")


@contextlib.contextmanager
def mount_erofs(
    bootstrap: PathLike,
    devices: Sequence[PathLike] = (),
    mountpoint: PathLike | None = None,
    *,
    options: Sequence[str] = (),
) -> Iterator[Path]:
    """Mount ``bootstrap`` read-only with the kernel EROFS driver.

    The bootstrap and every extra device (blobs in blob-table order) are attached to loop
    devices; ``-o ro,device=LOOP1,device=LOOP2...`` is passed.  Without devices this is a
    metadata-only mount (file data must not be read).  ``mountpoint`` is created if missing;
    with ``None`` a directory next to the bootstrap is used.  Yields the mountpoint path.
    """
    mp = Path(mountpoint) if mountpoint is not None else Path(os.fspath(bootstrap) + ".mnt")
    created = not mp.exists()
    mp.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if created:
            stack.callback(_rmdir_quiet, mp)
        boot_dev = stack.enter_context(loop_device(bootstrap))
        dev_loops = [stack.enter_context(loop_device(d)) for d in devices]
        opts = ["ro", *(f"device={d}" for d in dev_loops), *options]
        r = _run(["mount", "-t", "erofs", "-o", ",".join(opts), boot_dev, os.fspath(mp)])
        if r.returncode != 0:
            raise MountError(
                f"mount -t erofs -o {','.join(opts)} {boot_dev} ({bootstrap}) {mp}: "
                f"rc {r.returncode}: {r.stderr.strip()}\n{_dmesg_tail()}"
            )
        stack.callback(umount, mp)
        yield mp


@contextlib.contextmanager
def mount_overlay(lowerdirs: Sequence[PathLike], mountpoint: PathLike) -> Iterator[Path]:
    """Read-only overlayfs over ``lowerdirs`` given **top first**; unmount at exit."""
    mp = Path(mountpoint)
    mp.mkdir(parents=True, exist_ok=True)
    lower = ":".join(os.fspath(d) for d in lowerdirs)
    if len(lowerdirs) == 1:
        # overlayfs needs at least two lower layers without an upper; add an empty bottom layer
        empty = mp.parent / (mp.name + ".empty-lower")
        empty.mkdir(exist_ok=True)
        lower += ":" + os.fspath(empty)
    r = _run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", os.fspath(mp)])
    if r.returncode != 0:
        raise MountError(
            f"mount -t overlay lowerdir={lower} {mp}: {r.stderr.strip()}\n{_dmesg_tail()}"
        )
    try:
        yield mp
    finally:
        umount(mp)


def _rmdir_quiet(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.rmdir()


def fsck_erofs(
    bootstrap: PathLike,
    device: PathLike | Sequence[PathLike] | None = None,
    *,
    extract: PathLike | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 600,
) -> tuple[int, str]:
    """Run ``fsck.erofs [--device=D ...] [--extract=DIR] BOOTSTRAP``; return (rc, stdout+stderr)."""
    if device is None:
        devices: list[PathLike] = []
    elif isinstance(device, (str, os.PathLike)):
        devices = [device]
    else:
        devices = list(device)
    cmd = ["fsck.erofs", *(f"--device={os.fspath(d)}" for d in devices)]
    if extract is not None:
        cmd.append(f"--extract={os.fspath(extract)}")
    cmd += [*extra_args, os.fspath(bootstrap)]
    r = _run(cmd, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr)


def dump_erofs(bootstrap: PathLike, *args: str, device: PathLike | None = None) -> tuple[int, str]:
    """Run ``dump.erofs [--device=D] ARGS... BOOTSTRAP``; return (rc, stdout+stderr)."""
    cmd = ["dump.erofs"]
    if device is not None:
        cmd.append(f"--device={os.fspath(device)}")
    cmd += [*args, os.fspath(bootstrap)]
    r = _run(cmd)
    return r.returncode, (r.stdout + r.stderr)
