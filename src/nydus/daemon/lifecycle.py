"""The nydusd process: mount the image with FUSE, serve the API, stop on a signal.

`run_daemon(options)` is the whole life cycle: check the mountpoint, load the RAFS instance
(`NydusDaemon.mount_rafs`), start the API server, mount the FUSE session (READY), serve it
(RUNNING) until SIGINT/SIGTERM, an external unmount or an API exit request, then unmount,
stop the API and close the instance (STOPPED).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from nydus.daemon.api import ApiServer
from nydus.daemon.service import DaemonOptions, NydusDaemon
from nydus.daemon.state import DaemonState
from nydus.errors import ConfigError
from nydus.fs.multi import MultiFs
from nydus.kernel.mounts import is_mounted

__all__ = ["run_daemon"]

log = logging.getLogger(__name__)

#: delay before an API exit request stops the process, so that its answer goes out first
EXIT_DELAY = 0.05


def _exit_soon() -> None:
    """End this process the way a SIGTERM does (the FUSE session watches for it)."""
    threading.Timer(EXIT_DELAY, os.kill, args=(os.getpid(), signal.SIGTERM)).start()


def run_daemon(options: DaemonOptions) -> int:
    """The nydusd life cycle; raises NydusError for bad input before anything is mounted."""
    from nydus.fuse import FuseSession  # pyfuse3 and trio only in the process that serves

    if options.virtual_mountpoint != "/":
        raise ConfigError("--virtual-mountpoint other than / is not supported")
    mountpoint = os.path.abspath(options.mountpoint)
    if not os.path.exists(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        log.warning("%s is already a mountpoint; mounting on top of it", mountpoint)
    prefetch_files = tuple(options.prefetch_files)
    daemon = NydusDaemon(options, on_exit=_exit_soon)
    m = None
    if options.bootstrap is None:  # images come through API mounts, at /<id>
        if not options.apisock:
            raise ConfigError("a nydusd without --bootstrap needs --apisock (API mounts)")
        daemon.multi = MultiFs(os.geteuid(), os.getegid())
        session = FuseSession(daemon.multi, mountpoint, threads=options.threads)
    else:
        if options.config is None:
            raise ConfigError("--bootstrap needs --config or --localfs-dir")
        m = daemon.mount_rafs(options.virtual_mountpoint, options.bootstrap, options.config)
        session = FuseSession(m.fs, mountpoint, threads=options.threads)
    api: ApiServer | None = None
    try:
        if options.apisock:
            api = ApiServer(daemon, options.apisock)
            api.start()
        daemon.state.to(DaemonState.READY)
        session.mount()
    except BaseException:
        if api is not None:
            api.stop()
        daemon.close_mounts()
        raise

    def started() -> None:
        daemon.state.to(DaemonState.RUNNING)
        log.info("starting fuse daemon")
        if m is not None:
            daemon.start_prefetch(m, prefetch_files)

    try:
        session.serve(started)
    finally:
        t0 = time.monotonic()
        session.close()
        daemon.state.to(DaemonState.STOPPED)
        if api is not None:
            api.stop()
        daemon.close_mounts()
        log.info("nydusd stopped (%.1f ms to unmount)", (time.monotonic() - t0) * 1000)
    return 0
