"""How a mounted RAFS instance reaches the kernel (`--fs-driver`).

* `FuseDriver`: our FUSE server answers every lookup, getattr, readdir and read at the
  mountpoint (`RafsOperations` over the filesystem core).
* `ErofsDriver`: the kernel's EROFS mounts the bootstrap at the mountpoint and answers all
  metadata and cached data itself; its devices are the blobs' uncompressed views, one
  read-only file per blob on a private FUSE mount of ours under the work dir, filled
  through the chunk device. File-backed (mount(2) with `device=` naming those files) where
  the kernel supports it, else over read-only loop devices.

A driver is mounted once and closed once; `ended` is set when its mount goes away from
outside (then the daemon stops).

Stale state: before mounting, dead FUSE mounts on the mountpoint (a daemon killed with
SIGKILL leaves them answering ENOTCONN) are lazily unmounted, so mounts never stack on a
dead one. The erofs driver also records what it mounted in `<work dir>/erofs-<key>.json`;
a later start on the same mountpoint whose recorded daemon is gone removes its EROFS mount
(its metadata still answers, its data is dead) and its dead blob mount first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import threading
from typing import Any, Protocol

from nydus.errors import ConfigError
from nydus.format.constants import BlobFeatures

__all__ = [
    "Driver",
    "ErofsDriver",
    "FuseDriver",
    "clear_stale_mounts",
    "erofs_unsupported",
    "work_dir_for",
]

log = logging.getLogger(__name__)


class Driver(Protocol):
    name: str
    ended: threading.Event

    def mount(self) -> None: ...
    def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def clear_stale_mounts(mountpoint: str) -> None:
    """Lazily unmount dead FUSE mounts stacked on `mountpoint` (ENOTCONN)."""
    from nydus.kernel.mounts import MountError, clear_dead_mounts, is_mounted

    try:
        clear_dead_mounts(mountpoint)
    except MountError as exc:
        raise ConfigError(f"mountpoint {mountpoint} holds a dead mount: {exc}") from exc
    if is_mounted(mountpoint):
        log.warning("%s is already a mountpoint; mounting on top of it", mountpoint)


class FuseDriver:
    """The RAFS filesystem served over FUSE at the mountpoint."""

    name = "fuse"

    def __init__(self, fs: Any, mountpoint: str, threads: int = 4) -> None:
        from nydus.fuse import FuseSession, RafsOperations

        self.mountpoint = mountpoint
        self.session = FuseSession(RafsOperations(fs), mountpoint, threads=threads)
        self.ended = self.session.ended

    def mount(self) -> None:
        clear_stale_mounts(self.mountpoint)
        self.session.mount()

    def close(self) -> None:
        self.session.close()

    def describe(self) -> dict[str, Any]:
        return {"fs_driver": self.name}


def erofs_unsupported(sb: Any) -> str | None:
    """Why the erofs driver cannot serve this image (None when it can)."""
    if sb.version != 6:
        return f"RAFS v{sb.version} is not an EROFS image"
    for b in sb.blobs:
        # (features no reader supports were refused when the instance was loaded)
        if not b.features & BlobFeatures.ALIGNED:
            return f"blob {b.blob_id} has chunks not 4 KiB-aligned in its uncompressed space"
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"nydusd" in cmd


class ErofsDriver:
    """The bootstrap mounted by the kernel's EROFS over our blob views."""

    name = "erofs"

    def __init__(
        self,
        mount: Any,  # a daemon RafsMount: sb, fs, device, bootstrap
        mountpoint: str,
        work_dir: str,
        threads: int = 4,
        method: str = "auto",
    ) -> None:
        why = erofs_unsupported(mount.sb)
        if why is not None:
            raise ConfigError(
                f"--fs-driver erofs cannot serve {mount.bootstrap}: {why}; use --fs-driver fuse"
            )
        self.m = mount
        self.mountpoint = mountpoint
        self.method = method
        self.threads = threads
        key = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
        self.work_dir = os.path.abspath(work_dir)
        self.view_dir = os.path.join(self.work_dir, f"erofs-{key}")
        self.state_path = self.view_dir + ".json"
        self.ended = threading.Event()
        self.session: Any = None
        self.erofs: Any = None
        self._lock = threading.Lock()

    # ---- state of the previous daemon on this mountpoint --------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            with open(self.state_path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return None
        return state if isinstance(state, dict) else None

    def _write_state(self, method: str) -> None:
        state = {
            "pid": os.getpid(),
            "mountpoint": self.mountpoint,
            "bootstrap": self.m.bootstrap,
            "view": self.view_dir,
            "method": method,
        }
        tmp = f"{self.state_path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_path)

    def _clean_previous(self) -> None:
        from nydus.kernel import loop
        from nydus.kernel.mounts import MountError, clear_dead_mounts, mounts_at, unmount

        state = self._read_state()
        if state is not None:
            pid = int(state.get("pid", 0) or 0)
            if _pid_alive(pid):
                raise ConfigError(
                    f"mountpoint {self.mountpoint} is served by a running nydusd (pid {pid})"
                )
            boot = state.get("bootstrap")
            for _ in range(8):
                top = mounts_at(self.mountpoint)
                if not top or top[-1].fstype != "erofs":
                    break
                src = top[-1].source
                if src != boot and loop.backing_file(src) != boot:
                    break
                try:
                    unmount(self.mountpoint, lazy=True)
                except MountError as exc:
                    raise ConfigError(
                        f"cannot remove the EROFS mount left on {self.mountpoint}: {exc}"
                    ) from exc
                log.warning(
                    "removed the EROFS mount nydusd pid %d left on %s", pid, self.mountpoint
                )
        clear_stale_mounts(self.mountpoint)
        try:
            clear_dead_mounts(self.view_dir)
        except MountError as exc:
            raise ConfigError(f"cannot remove the dead blob mount {self.view_dir}: {exc}") from exc
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)

    # ---- mount / close -----------------------------------------------------------------------
    def mount(self) -> None:
        from nydus.fuse import FuseSession
        from nydus.fuse.blobview import BlobViewOperations
        from nydus.kernel.erofs import mount_erofs
        from nydus.kernel.mounts import MountError, is_mounted
        from nydus.storage.view import BlobViews

        try:
            os.makedirs(self.view_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the work dir {self.view_dir}: {exc.strerror}"
            ) from exc
        self._clean_previous()
        if is_mounted(self.view_dir):
            raise ConfigError(f"{self.view_dir} is already a mountpoint (another nydusd?)")
        ops = BlobViewOperations(BlobViews(self.m.device), self.m.fs.metrics, self.m.fs.pattern)
        self.session = FuseSession(
            ops, self.view_dir, threads=self.threads, fsname="nydus-blobs", allow_other=False
        )
        self.session.on_end = self._blob_mount_ended
        self._write_state("pending")
        self.session.mount()
        devices = [os.path.join(self.view_dir, ops.name(i)) for i in range(len(self.m.sb.blobs))]
        try:
            self.erofs = mount_erofs(self.m.bootstrap, devices, self.mountpoint, self.method)
        except MountError as exc:
            self.session.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)
            if exc.errno == errno.ENODEV:
                raise ConfigError(f"{exc}; use --fs-driver fuse") from exc
            raise ConfigError(
                f"the kernel refused to mount {self.m.bootstrap} as EROFS ({exc}); "
                "use --fs-driver fuse"
            ) from exc
        self._write_state(self.erofs.method)
        self._watch()
        if self.erofs.method == "file":
            log.info(
                "mounted EROFS at %s file-backed: bootstrap %s, %d blob device(s) in %s",
                self.mountpoint,
                self.m.bootstrap,
                len(devices),
                self.view_dir,
            )
        else:
            log.info(
                "mounted EROFS at %s over loop devices %s (bootstrap %s, blobs in %s)",
                self.mountpoint,
                ",".join(self.erofs.loops),
                self.m.bootstrap,
                self.view_dir,
            )

    def _watch(self) -> None:
        """Set `ended` when our EROFS mount goes away from outside (an external umount)."""
        from nydus.kernel.mounts import mounts_at

        found = mounts_at(self.mountpoint)
        if not found:
            return
        mount_id = found[-1].mount_id

        def run() -> None:
            import select

            from nydus.kernel.mounts import mounts

            try:
                with open("/proc/self/mountinfo", "rb") as f:
                    p = select.poll()
                    p.register(f, select.POLLPRI | select.POLLERR)
                    while self.erofs is not None:
                        p.poll(1000)
                        if self.erofs is None:
                            return
                        if not any(m.mount_id == mount_id for m in mounts()):
                            log.info("EROFS mount %s went away", self.mountpoint)
                            self.ended.set()
                            return
            except OSError as exc:
                log.debug("cannot watch the mount table: %s", exc)

        threading.Thread(target=run, name="nydusd-erofs-watch", daemon=True).start()

    def _blob_mount_ended(self) -> None:
        if not self.ended.is_set():
            log.warning("the blob mount %s went away", self.view_dir)
            self.ended.set()

    def close(self) -> None:
        """Unmount EROFS (lazily when busy; its loop devices go with it), then the blob
        mount (aborting its connection when still busy)."""
        from nydus.kernel.mounts import MountError

        with self._lock:
            erofs, self.erofs = self.erofs, None
            session, self.session = self.session, None
        if erofs is not None:
            try:
                erofs.unmount()
            except MountError as exc:
                log.warning("unmounting %s failed: %s", self.mountpoint, exc)
        if session is not None:
            session.on_end = None
            session.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)
        with contextlib.suppress(OSError):
            os.rmdir(self.view_dir)

    def describe(self) -> dict[str, Any]:
        return {
            "fs_driver": self.name,
            "erofs_mount": self.erofs.method if self.erofs is not None else None,
            "blob_dir": self.view_dir,
        }


def work_dir_for(cache_dir: str | None, flag: str | None) -> str:
    """The erofs driver's work dir: `--work-dir`, else the blob cache's, else /run/nydusd."""
    if flag:
        return flag
    if cache_dir:
        return cache_dir
    return "/run/nydusd"
