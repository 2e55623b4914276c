"""The nydusd service: the RAFS instances a daemon holds and the views the API reports.

`NydusDaemon` loads and holds the mounts, prefetches, and answers the API's questions; it
knows nothing of HTTP: a bad request raises a domain error (`NotFound`, `InvalidArgument`,
`NotReady`...) that `api.py` maps to a status. The process around it (FUSE session, signals,
API server) is `lifecycle.run_daemon`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import mmap
import os
import stat
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import nydus
from nydus.config import NydusdConfig, parse_config
from nydus.daemon.state import DaemonState, StateMachine
from nydus.errors import (
    ConfigError,
    FormatError,
    InvalidArgument,
    NotFound,
    NotReady,
    NydusError,
    Unsupported,
)
from nydus.format.constants import super_flags_names
from nydus.format.rafs import ChunkRef, RafsSuper, open_bootstrap, walk
from nydus.fs import FsOptions, RafsFs
from nydus.fs.multi import MultiFs
from nydus.storage import ChunkDevice, create_backend
from nydus.storage.backend import BlobBackend
from nydus.storage.prefetch import PrefetchScheduler
from nydus.utils.loglevel import LEVELS

__all__ = [
    "DaemonOptions",
    "NydusDaemon",
    "RafsMount",
    "load_bootstrap",
]

log = logging.getLogger(__name__)

#: prefetch defaults where the config leaves them 0 (upstream's: 8 threads, 1 MiB ranges)
DEFAULT_PREFETCH_THREADS = 8
DEFAULT_MERGING_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    mountpoint: str
    bootstrap: str | None  # None: no image at start; images come through API mounts
    config: NydusdConfig | None  # the config of `bootstrap` (None with it)
    apisock: str | None = None
    threads: int = 4
    id: str | None = None
    supervisor: str | None = None
    prefetch_files: tuple[str, ...] = ()
    virtual_mountpoint: str = "/"
    config_text: str = ""
    #: where the erofs driver mounts its blob views (None: the blob cache's work dir)
    work_dir: str | None = None


@dataclass
class RafsMount:
    """One RAFS instance mounted at a virtual mountpoint of the daemon."""

    mountpoint: str
    bootstrap: str
    sb: RafsSuper
    fs: RafsFs
    device: ChunkDevice
    backend: BlobBackend
    config: NydusdConfig
    mounted_time: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))
    buffer: Any = None

    def close(self) -> None:
        self.device.close()
        self.backend.close()
        if isinstance(self.buffer, mmap.mmap):
            try:
                self.buffer.close()
            except BufferError:
                pass  # parsed records still reference it; the process is exiting anyway


def load_bootstrap(path: str) -> tuple[RafsSuper, Any]:
    """mmap and parse a bootstrap file; FormatError/ConfigError naming the file otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open bootstrap {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"bootstrap {path} is not a regular file")
        if st.st_size == 0:
            raise FormatError(f"bootstrap {path} is empty, not a RAFS bootstrap")
        buf = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        # an mmap reads like bytes (slices are bytes, struct unpacks from it)
        return open_bootstrap(cast(bytes, buf)), buf
    except FormatError as exc:
        buf.close()
        raise FormatError(f"failed to load bootstrap {path}: {exc}") from None
    except struct.error as exc:  # truncated records
        buf.close()
        raise FormatError(f"failed to load bootstrap {path}: truncated ({exc})") from None


def _git_dir(start: str) -> str | None:
    """The git directory of the checkout holding `start` (a worktree's `.git` is a file
    naming it), or None."""
    d = start
    while True:
        dotgit = os.path.join(d, ".git")
        if os.path.isdir(dotgit):
            return dotgit
        if os.path.isfile(dotgit):
            try:
                with open(dotgit) as f:
                    line = f.read().strip()
            except OSError:
                return None
            if line.startswith("gitdir:"):
                return os.path.normpath(os.path.join(d, line[7:].strip()))
            return None
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _git_commit() -> str:
    """The commit the sources were checked out at, read from the git files (no `git`
    subprocess: the API answers at once); "unknown" outside a checkout."""
    git = _git_dir(os.path.dirname(os.path.abspath(nydus.__file__)))
    if git is None:
        return "unknown"
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref:"):
            return head
        ref = head[4:].strip()
        common = git
        if os.path.isfile(os.path.join(git, "commondir")):
            with open(os.path.join(git, "commondir")) as f:
                common = os.path.normpath(os.path.join(git, f.read().strip()))
        for base in (git, common):
            path = os.path.join(base, ref)
            if os.path.isfile(path):
                with open(path) as f:
                    return f.read().strip()
        with open(os.path.join(common, "packed-refs")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        pass
    return "unknown"


def _build_time() -> str:
    try:
        ts = os.stat(nydus.__file__).st_mtime
    except OSError:
        return "unknown"
    return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


class NydusDaemon:
    """State, mounts and metrics of one nydusd process."""

    def __init__(self, options: DaemonOptions, on_exit: Callable[[], None] | None = None) -> None:
        """`on_exit` is how the process around the daemon ends it (`request_exit`)."""
        self.options = options
        self.id = options.id
        self.supervisor = options.supervisor
        self.state = StateMachine()
        self.mounts: dict[str, RafsMount] = {}
        #: the pseudo root of a daemon started without a bootstrap (API mounts at /<id>)
        self.multi: MultiFs | None = None
        self._on_exit = on_exit
        self.runtime: dict[str, dict[str, str]] = {}
        self._version: dict[str, str] | None = None
        self.driver: Any = None  # how the instance reaches the kernel (daemon.drivers)
        self._lock = threading.Lock()

    # ---- mounting ----------------------------------------------------------------------
    def mount_rafs(self, mountpoint: str, bootstrap: str, config: NydusdConfig) -> RafsMount:
        sb, buf = load_bootstrap(bootstrap)
        try:
            log.info("rafs superblock features: %s", " ".join(super_flags_names(sb.flags)))
            if config.rafs.mode == "cached" and sb.version == 6:
                raise ConfigError('mode "cached" is not supported for RAFS v6 images; use "direct"')
            if config.cache.type == "fscache":
                raise ConfigError(
                    "cache type fscache needs `nydusd singleton`; use blobcache for FUSE mounts"
                )
            backend = create_backend(config.backend, deferred=True)  # built after the mount
            log.info("backend config: %s", config.describe_backend())
            cache_dir = None
            if config.cache.enabled:
                cache_dir = os.path.abspath(config.cache.work_dir)
                try:
                    os.makedirs(cache_dir, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(
                        f"cannot create cache work_dir {cache_dir}: {exc.strerror}"
                    ) from exc
                if config.cache.compressed:
                    log.warning(
                        "cache.compressed is not supported; caching uncompressed data "
                        "in .blob.data files"
                    )
            device = ChunkDevice(
                sb,
                backend,
                cache_dir=cache_dir,
                validate=config.rafs.validate,
                cache_validate=config.cache.validate,
                batch_size=config.rafs.batch_size,
            )
            try:
                device.check()  # blob meta itself loads on first use of each blob
            except NydusError:
                device.close()
                backend.close()
                raise
            log.info("rafs imported")
            fs = RafsFs(
                sb,
                device,
                FsOptions(
                    enable_xattr=config.rafs.enable_xattr,
                    iostats_files=config.rafs.iostats_files,
                    access_pattern=config.rafs.access_pattern,
                    latest_read_files=config.rafs.latest_read_files,
                    id=mountpoint,
                ),
            )
            log.info(
                "rafs mounted: mode=%s digest_validate=%s iostats_files=%s",
                config.rafs.mode,
                str(config.rafs.validate).lower(),
                str(config.rafs.iostats_files).lower(),
            )
        except BaseException:
            try:
                buf.close()
            except BufferError:
                pass
            raise
        m = RafsMount(
            mountpoint, os.path.abspath(bootstrap), sb, fs, device, backend, config, buffer=buf
        )
        with self._lock:
            self.mounts[mountpoint] = m
        log.info("vfs mounted")
        return m

    # ---- API mounts (POST/PUT/DELETE /api/v1/mount) ---------------------------------------
    def api_mount(self, mountpoint: str, body: Any, replace: bool = False) -> None:
        """Attach the RAFS instance `body` describes at `mountpoint` (`/<id>`) of the pseudo
        root; with `replace`, in place of the instance mounted there."""
        if self.multi is None:
            raise Unsupported(
                "this nydusd serves one image at / (started with --bootstrap); "
                "API mounts need a daemon started without one"
            )
        if not isinstance(body, dict):
            raise InvalidArgument('expected {"source": ..., "fs_type": "rafs", "config": ...}')
        source, fs_type, text = body.get("source"), body.get("fs_type", "rafs"), body.get("config")
        if fs_type != "rafs":
            raise Unsupported(f"fs_type {fs_type!r} is not supported (rafs)")
        if not isinstance(source, str) or not source:
            raise InvalidArgument("`source` (the bootstrap path) is required")
        if not isinstance(text, str):
            raise InvalidArgument("`config` (the config file's content as a string) is required")
        name = mountpoint.strip("/")
        if not mountpoint.startswith("/") or not name or "/" in name:
            raise InvalidArgument(f"mountpoint {mountpoint!r} must be /<name>")
        mountpoint = "/" + name
        with self._lock:
            if mountpoint in self.mounts and not replace:
                raise InvalidArgument(f"{mountpoint} is already mounted")
            if mountpoint not in self.mounts and replace:
                raise NotFound(f"{mountpoint} is not mounted")
        try:
            config = parse_config(text)
            config.validate()
        except ConfigError as exc:
            raise InvalidArgument(f"config for {mountpoint}: {exc}") from None
        if not os.path.exists(source):
            raise InvalidArgument(f"bootstrap {source} does not exist")
        if replace:
            self.api_umount(mountpoint)
        m = self.mount_rafs(mountpoint, source, config)
        try:
            self.multi.add(mountpoint, m.fs)
        except BaseException:
            with self._lock:
                self.mounts.pop(mountpoint, None)
            m.close()
            raise
        log.info("api mount %s: %s", mountpoint, source)

    def api_umount(self, mountpoint: str) -> None:
        if self.multi is None:
            raise Unsupported("this nydusd serves one image at / (started with --bootstrap)")
        mountpoint = "/" + mountpoint.strip("/")
        with self._lock:
            m = self.mounts.pop(mountpoint, None)
        if m is None:
            raise NotFound(f"{mountpoint} is not mounted")
        self.multi.remove(mountpoint)
        m.close()
        log.info("api umount %s", mountpoint)

    def close_mounts(self) -> None:
        with self._lock:
            mounts, self.mounts = list(self.mounts.values()), {}
        for m in mounts:
            m.close()

    # ---- prefetch ----------------------------------------------------------------------
    def start_meta_load(
        self, m: RafsMount, on_refused: Callable[[NydusError], None]
    ) -> threading.Thread:
        """Load every blob's chunk metadata in the background once mounted (the mount
        itself needs no request). A backend that refuses us for good (authentication
        failed, no such bucket, object or blob: EACCES, EPERM, ENOENT) is a configuration
        error: `on_refused` ends the daemon with it. Anything else (a registry that is down)
        fails the reads that need the blob, until it loads."""

        def run() -> None:
            for blob in m.sb.blobs:
                try:
                    m.device.meta(blob.blob_index)
                except NydusError as exc:
                    if isinstance(exc, ConfigError) or exc.errno in (
                        errno.EACCES,
                        errno.EPERM,
                        errno.ENOENT,
                    ):
                        on_refused(exc)
                        return
                except Exception:  # a background helper must not die loudly
                    if self.state.state is DaemonState.STOPPED:
                        return  # the instance was closed under it
                    log.exception("loading the chunk metadata of blob %s", blob.blob_id)

        t = threading.Thread(target=run, name="nydusd-blob-meta", daemon=True)
        t.start()
        return t

    def start_prefetch(self, m: RafsMount, files: tuple[str, ...]) -> PrefetchScheduler | None:
        """Start the background prefetch of a mount: `--prefetch-files` (which override the
        bootstrap's prefetch table), else the table when prefetch is enabled; a table that
        is the root, or `prefetch_all`, then takes every other chunk too. Returns at once."""
        rp, cp = m.config.rafs.prefetch, m.config.cache.prefetch
        pf = rp if rp.enable else cp
        inos: list[int] = []
        for path in files:
            try:
                inos.append(m.fs.resolve(path))
            except NydusError as exc:
                log.warning("prefetch: %s: %s", path, exc)
        if not files and pf.enable:
            inos = m.sb.prefetch_inos()
        whole = pf.enable and pf.prefetch_all
        if inos == [m.sb.root_ino]:  # the whole image, in blob order
            inos, whole = [], True
        if whole and m.sb.version == 5:  # no chunk-info arrays: file by file
            inos, whole = [*inos, m.sb.root_ino], False
        if not inos and not whole:
            return None
        if m.device.cache_dir is None:
            log.info("prefetch skipped: it needs a blob cache")
            return None

        def refs() -> Iterator[ChunkRef]:
            seen: set[int] = set()
            for top in inos:
                below = walk(m.sb, top) if m.sb.attr(top).is_dir else [(b"", top)]
                for _path, ino in below:
                    if ino in seen:
                        continue
                    seen.add(ino)
                    a = m.sb.attr(ino)
                    if a.is_reg and a.size:
                        yield from m.fs.chunks(ino)

        log.info(
            "prefetch: %d entries%s, %d threads, merging %d bytes, bandwidth %s",
            len(inos),
            " then every other chunk" if whole else "",
            pf.threads or DEFAULT_PREFETCH_THREADS,
            pf.batch_size or DEFAULT_MERGING_SIZE,
            f"{pf.bandwidth_limit} B/s" if pf.bandwidth_limit else "unlimited",
        )
        return m.device.start_prefetch(
            refs,
            threads=pf.threads or DEFAULT_PREFETCH_THREADS,
            merging_size=pf.batch_size or DEFAULT_MERGING_SIZE,
            bandwidth_limit=pf.bandwidth_limit,
            prefetch_all=whole,
        )

    # ---- API views -----------------------------------------------------------------------
    def version(self) -> dict[str, str]:
        if self._version is None:
            self._version = {
                "package_ver": nydus.__version__,
                "git_commit": _git_commit(),
                "build_time": _build_time(),
                "profile": "release",
                "rustc": f"{sys.implementation.name.replace('cpython', 'CPython')} "
                f"{sys.version.split()[0]}",
            }
        return self._version

    def daemon_info(self, with_backends: bool = True) -> dict[str, Any]:
        info: dict[str, Any] = {
            "version": self.version(),
            "id": self.id,
            "supervisor": self.supervisor,
            "state": self.state.state.value,
        }
        if self.driver is not None:
            info.update(self.driver.describe())
        if with_backends:
            info["backend_collection"] = {
                mp: {
                    "backend_type": "Rafs",
                    "mountpoint": mp,
                    "mounted_time": m.mounted_time.isoformat(timespec="microseconds").replace(
                        "+00:00", "Z"
                    ),
                    "config": m.config.redacted().to_v2_dict(),
                }
                for mp, m in sorted(self.mounts.items())
            }
        return info

    def events(self) -> dict[str, Any]:
        return {"max_errors": 0, "total_errors": 0, "max_size": 0, "total_size": 0, "errors": []}

    def _mount(self, id: str | None, by_device_id: bool = False) -> RafsMount:
        with self._lock:
            mounts = dict(self.mounts)
        if id is None or id == "":
            if len(mounts) == 1:
                return next(iter(mounts.values()))
            if not mounts:
                raise NotFound("no instance mounted")
            raise InvalidArgument("several instances are mounted: give ?id=")
        if id in mounts:
            return mounts[id]
        if by_device_id:
            for m in mounts.values():
                if m.config.id == id:
                    return m
        raise NotFound(f"no instance with id {id!r}")

    def backend_info(self, mountpoint: str) -> dict[str, Any]:
        m = self._mount(mountpoint)
        sb = m.sb
        return {
            "version": sb.version,
            "flags": sb.flags,
            "features": super_flags_names(sb.flags),
            "chunk_size": sb.chunk_size,
            "compressor": sb.compressor.label,
            "digester": sb.digester.label,
            "inodes_count": sb.inode_count,
            "root_inode": sb.root_ino,
            "bootstrap": m.bootstrap,
            "blobs": [
                {
                    "blob_id": b.blob_id,
                    "blob_index": b.blob_index,
                    "meta_loaded": b.blob_index in m.device.metas,
                    "chunk_count": b.chunk_count,
                    "compressed_size": b.compressed_size,
                    "uncompressed_size": b.uncompressed_size,
                    "features": b.features,
                }
                for b in sb.blobs
            ],
        }

    def fs_metrics(self, id: str | None) -> dict[str, Any]:
        return self._mount(id).fs.metrics.snapshot()

    def files_metrics(self, id: str | None, latest: bool) -> Any:
        m = self._mount(id)
        if latest:
            if not m.fs.metrics.latest_read_files_enabled:
                raise InvalidArgument("latest_read_files is not enabled")
            return m.fs.metrics.take_latest_read_files()
        if not m.fs.metrics.files_enabled:
            raise InvalidArgument("iostats_files is not enabled")
        return m.fs.metrics.files_snapshot()

    def pattern_metrics(self, id: str | None, view: str = "records") -> Any:
        """`access_pattern` records (upstream's shape), the files read as a prefetch list
        (upstream's prefetch-files JSON) or the chunks read, all in first-access order."""
        m = self._mount(id)
        p = m.fs.pattern
        if p is None:
            raise InvalidArgument("access_pattern is not enabled")
        if view == "files":
            return p.prefetch_files()
        if view == "chunks":
            return [
                {"blob_index": bi, "blob_id": m.sb.blobs[bi].blob_id, "chunk_index": ci}
                for bi, ci in p.chunks()
                if 0 <= bi < len(m.sb.blobs)
            ]
        return p.snapshot()

    def backend_metrics(self, id: str | None) -> dict[str, Any]:
        return self._mount(id, by_device_id=True).backend.metrics.snapshot()

    def blobcache_metrics(self, id: str | None) -> dict[str, Any]:
        m = self._mount(id, by_device_id=True)
        snap = m.device.cache_snapshot()
        snap["id"] = m.config.id
        return snap

    def inflight(self) -> list[dict[str, int]]:
        with self._lock:
            mounts = list(self.mounts.values())
        out: list[dict[str, int]] = []
        for m in mounts:
            out.extend(m.fs.metrics.inflight())
        return out

    def runtime_config(self, id: str | None) -> dict[str, str]:
        return dict(self.runtime.get(id or "/", {}))

    def update_runtime_config(self, id: str | None, body: dict[str, Any]) -> None:
        allowed = {"registry_auth", "proxy_url", "dragonfly_scheduler_endpoint"}
        for k, v in body.items():
            if k not in allowed:
                raise InvalidArgument(f"unknown runtime config key {k!r}")
            if not isinstance(v, str):
                raise InvalidArgument(f"runtime config {k} must be a string")
        self.runtime.setdefault(id or "/", {}).update(body)
        log.info("runtime config updated: %s", ", ".join(sorted(body)))

    def set_log_level(self, level: str) -> None:
        lv = LEVELS.get(level.lower())
        if lv is None:
            raise InvalidArgument(f"unknown log level {level!r} (trace, debug, info, warn, error)")
        logging.getLogger().setLevel(lv)
        log.info("log level set to %s", level.lower())

    def api_start(self) -> None:
        if self.state.state is not DaemonState.RUNNING:
            raise NotReady(f"daemon is {self.state.state.value}")

    def request_exit(self) -> None:
        if self._on_exit is None:
            raise Unsupported("this daemon cannot be stopped through the API")
        log.info("exit requested through the API")
        self._on_exit()
