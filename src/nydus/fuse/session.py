"""Mount a `RafsFs` with FUSE and serve it until SIGINT/SIGTERM or an external unmount."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import pyfuse3
import trio

from nydus.errors import NydusError
from nydus.fs import RafsFs
from nydus.fs.multi import MultiFs
from nydus.fuse.ops import DEFAULT_TIMEOUT, RafsOperations
from nydus.kernel.mounts import mount_device

__all__ = ["FuseError", "FuseSession", "mount_options"]

log = logging.getLogger(__name__)

#: read-ahead window of the mount, KiB (FUSE requests grow up to this size)
READAHEAD_KB = 1024


class FuseError(NydusError):
    """The FUSE mount could not be set up."""


def _allow_other_permitted() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options(fsname: str = "nydusfs") -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions
    opts.add(f"fsname={fsname}")
    opts.add("ro")
    if _allow_other_permitted():
        opts.add("allow_other")
    return opts


def _fuse_fd() -> int | None:
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:
            continue
    return None


def tune_readahead(mountpoint: str, kb: int = READAHEAD_KB) -> None:
    """Raise the mount's read-ahead window so sequential reads arrive as large requests
    (the kernel default is 128 KiB per FUSE read). Best effort: needs root."""
    # from the mount table: asking the kernel with stat() would need the FUSE loop running
    try:
        dev = mount_device(mountpoint)
    except NydusError as exc:
        log.debug("cannot tune read-ahead of %s: %s", mountpoint, exc)
        return
    if dev is None:
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path) as f:
            current = int(f.read().strip() or 0)
        if current < kb:
            with open(path, "w") as f:
                f.write(f"{kb}\n")
            log.debug("read_ahead_kb of %s raised from %d to %d", mountpoint, current, kb)
    except (OSError, ValueError) as exc:
        log.debug("cannot tune read-ahead of %s: %s", mountpoint, exc)


class FuseSession:
    """One FUSE mount of one filesystem; `mount()` then `serve()` then `close()`."""

    def __init__(
        self,
        fs: RafsFs | MultiFs,
        mountpoint: str,
        threads: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        fsname: str = "nydusfs",
    ) -> None:
        self.fs = fs
        self.mountpoint = os.path.abspath(mountpoint)
        self.threads = max(1, threads)
        self.timeout = timeout
        self.options = mount_options(fsname)
        self.fsname = fsname
        self.mounted = False
        self.stop_signal: int | None = None

    def mount(self) -> None:
        if not os.path.isdir(self.mountpoint):
            raise FuseError(f"mountpoint {self.mountpoint} is not a directory")
        ops = RafsOperations(self.fs, None, self.timeout)
        self._ops = ops
        try:
            pyfuse3.init(ops, self.mountpoint, self.options)
        except (RuntimeError, OSError) as exc:
            raise FuseError(f"cannot mount FUSE at {self.mountpoint}: {exc}") from exc
        self.mounted = True
        fd = _fuse_fd()
        uid, gid = os.geteuid(), os.getegid()
        order = {"default_permissions": 0, "allow_other": 1}
        opts = ",".join(
            sorted(
                (o for o in self.options if not o.startswith("fsname=")),
                key=lambda o: (order.get(o, 2), o),
            )
        )
        log.info(
            "mount source %s dest %s with fstype fuse opts %s,fd=%s,rootmode=40000,"
            "user_id=%d,group_id=%d fd %s",
            self.fsname,
            self.mountpoint,
            opts,
            fd,
            uid,
            gid,
            fd,
        )

    def serve(self, on_started: Callable[[], None] | None = None) -> None:
        """Run the FUSE loop in this (main) thread until a signal or an unmount."""
        trio.run(self._main, on_started)

    async def _main(self, on_started: Callable[[], None] | None) -> None:
        self._ops.limiter = trio.CapacityLimiter(self.threads)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals, nursery.cancel_scope)
            if on_started is not None:
                on_started()
            # the kernel sets the mount's read-ahead while processing FUSE_INIT, which the
            # loop below answers: tune it from a thread once the mount responds
            threading.Thread(target=self._tune_after_init, name="nydusd-tune", daemon=True).start()
            await pyfuse3.main(min_tasks=1, max_tasks=max(8, 4 * self.threads))
            log.info("fuse session ended (filesystem unmounted)")
            nursery.cancel_scope.cancel()

    def _tune_after_init(self) -> None:
        try:
            os.stat(self.mountpoint)
        except OSError:
            return
        tune_readahead(self.mountpoint)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.stop_signal = signum
                log.info(
                    "received signal %s, unmounting %s",
                    signal.Signals(signum).name,
                    self.mountpoint,
                )
                scope.cancel()
                return

    def close(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        try:
            pyfuse3.close(unmount=True)
        except Exception as exc:  # noqa: BLE001 - best effort at shutdown
            log.warning("unmounting %s failed: %s", self.mountpoint, exc)
