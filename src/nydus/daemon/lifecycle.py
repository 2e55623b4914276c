"""The nydusd process: mount the image with its driver, serve the API, stop on a signal.

`run_daemon(options)` is the whole life cycle: check the mountpoint, load the RAFS instance
(`NydusDaemon.mount_rafs`), mount it with the chosen driver (`daemon.drivers`: fuse or
erofs; READY), start the API server (RUNNING: the API only comes after the mount, so that
nothing it imports delays it) until SIGINT/SIGTERM, an external unmount or an API exit
request, then unmount, stop the API and close the instance (STOPPED).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from nydus.daemon.service import DaemonOptions, NydusDaemon, RafsMount
from nydus.daemon.state import DaemonState
from nydus.errors import ConfigError, NydusError
from nydus.kernel.mounts import is_dead, is_mounted

if TYPE_CHECKING:
    from nydus.daemon.api import ApiServer
    from nydus.daemon.drivers import Driver

__all__ = ["run_daemon"]

log = logging.getLogger(__name__)

#: delay before an API exit request stops the process, so that its answer goes out first
EXIT_DELAY = 0.05


def _exit_soon() -> None:
    """End this process the way a SIGTERM does (the FUSE session watches for it)."""
    threading.Timer(EXIT_DELAY, os.kill, args=(os.getpid(), signal.SIGTERM)).start()


def _driver(daemon: NydusDaemon, m: RafsMount, mountpoint: str) -> Driver:
    from nydus.daemon.drivers import ErofsDriver, FuseDriver, work_dir_for

    o = daemon.options
    if m.config.fs_driver == "erofs":
        return ErofsDriver(
            m,
            mountpoint,
            work_dir_for(m.device.cache_dir, o.work_dir),
            threads=o.threads,
            method=m.config.erofs_mount,
        )
    return FuseDriver(m.fs, mountpoint, threads=o.threads)


def _multi_driver(daemon: NydusDaemon, options: DaemonOptions, mountpoint: str) -> Driver:
    """A daemon without an image: RAFS instances come through API mounts at /<id> of one
    FUSE mount (`fs.multi`), served by the fuse driver."""
    from nydus.daemon.drivers import FuseDriver
    from nydus.fs.multi import MultiFs

    if not options.apisock:
        raise ConfigError("a nydusd without --bootstrap needs --apisock (API mounts)")
    daemon.multi = MultiFs(os.geteuid(), os.getegid())
    return FuseDriver(daemon.multi, mountpoint, threads=options.threads)


def run_daemon(options: DaemonOptions) -> int:
    """The nydusd life cycle; raises NydusError for bad input before anything is mounted."""
    if options.virtual_mountpoint != "/":
        raise ConfigError("--virtual-mountpoint other than / is not supported")
    mountpoint = os.path.abspath(options.mountpoint)
    dead = is_mounted(mountpoint) and is_dead(mountpoint)  # the driver removes it
    if not dead and not os.path.lexists(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} does not exist")
    if not dead and not os.path.isdir(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is not a directory")
    prefetch_files = tuple(options.prefetch_files)
    daemon = NydusDaemon(options, on_exit=_exit_soon)
    m: RafsMount | None = None
    try:
        if options.bootstrap is None:  # images come through API mounts, at /<id>
            driver = _multi_driver(daemon, options, mountpoint)
        else:
            if options.config is None:
                raise ConfigError("--bootstrap needs --config or --localfs-dir")
            m = daemon.mount_rafs(options.virtual_mountpoint, options.bootstrap, options.config)
            driver = _driver(daemon, m, mountpoint)
    except BaseException:
        daemon.close_mounts()
        raise
    daemon.driver = driver
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %s, unmounting %s", signal.Signals(signum).name, mountpoint)
        stop.set()

    def watch_ended() -> None:
        driver.ended.wait()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    threading.Thread(target=watch_ended, name="nydusd-ended", daemon=True).start()
    api: ApiServer | None = None
    refused: list[NydusError] = []
    try:
        try:
            daemon.state.to(DaemonState.READY)
            driver.mount()
            if m is not None:  # prefetch from the moment of the mount, ahead of first reads
                daemon.start_prefetch(m, prefetch_files)
            if options.apisock:  # after the mount: the API is not on the way to it
                from nydus.daemon.api import ApiServer

                api = ApiServer(daemon, options.apisock)
                try:
                    api.start()
                except BaseException:
                    api = None
                    driver.close()
                    raise
        except BaseException:
            if api is not None:
                api.stop()
            daemon.close_mounts()
            raise
        daemon.state.to(DaemonState.RUNNING)
        log.info("starting fuse daemon")

        def on_refused(exc: NydusError) -> None:
            refused.append(exc)
            stop.set()

        if m is not None:
            daemon.start_meta_load(m, on_refused)
        try:
            stop.wait()
        finally:
            t0 = time.monotonic()
            driver.close()
            daemon.state.to(DaemonState.STOPPED)
            if api is not None:
                api.stop()
            daemon.close_mounts()
            log.info("nydusd stopped (%.1f ms to unmount)", (time.monotonic() - t0) * 1000)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if refused:
        raise refused[0]  # the backend refused us for good: one ERROR line, exit 1
    return 0
