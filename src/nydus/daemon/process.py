"""Start a nydusd subprocess, wait until it serves, stop it and clear its mount.

The one harness for a nydusd child, used by `nydusify check`, the benchmarks and the test
fixtures (and the snapshotter's dedicated mode): build the command line from
`NydusdCommand`, `start_nydusd()` it, get a `NydusdProcess` back (pid, API client, output),
`stop()` it. Works with any nydusd that takes upstream's flags (ours by default).

A daemon is up when it is RUNNING: its API answers `GET /api/v1/daemon` with
`"state": "RUNNING"` and its mountpoint is in the mount table (without an API socket, the
mount table alone says so).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from nydus.daemon.client import ApiClient, http_client
from nydus.errors import NydusError
from nydus.kernel.mounts import is_mounted, unmount_all

__all__ = [
    "START_TIMEOUT",
    "NydusdCommand",
    "NydusdProcess",
    "StartError",
    "find_nydusd",
    "start_nydusd",
]

StrPath = str | os.PathLike[str]

#: seconds a daemon may take to become RUNNING
START_TIMEOUT = 30.0
#: seconds between two looks at a starting daemon
POLL_INTERVAL = 0.01


class StartError(NydusError):
    """nydusd could not be started, exited, or did not become RUNNING in time."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output  # what the daemon wrote (stdout and stderr) until then


def find_nydusd(explicit: str | None = None) -> str:
    """`explicit`, else the nydusd beside this interpreter (our own), else nydusd on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nydusd"
    if beside.exists():
        return str(beside)
    found = shutil.which("nydusd")
    if found is None:
        raise StartError("nydusd not found")
    return found


@dataclass(frozen=True, slots=True)
class NydusdCommand:
    """What to run: `nydusd [fuse] [--config C | -D DIR] --mountpoint M [--bootstrap B]
    [--apisock S] ...` (no bootstrap: a daemon whose images come through API mounts)."""

    mountpoint: StrPath
    bootstrap: StrPath | None
    apisock: StrPath | None = None
    config: StrPath | None = None  # a config file (v1/v2 JSON, TOML)
    localfs_dir: StrPath | None = None  # or -D: localfs backend and blob cache in this dir
    log_level: str = "info"
    log_file: StrPath | None = None  # --log-file (the daemon then logs there, not to stderr)
    threads: int | None = None  # --thread-num
    id: str | None = None
    supervisor: str | None = None
    prefetch_files: StrPath | None = None
    fs_driver: str | None = None  # --fs-driver fuse|erofs (ours)
    erofs_mount: str | None = None  # --erofs-mount auto|file|loop (ours)
    work_dir: StrPath | None = None  # --work-dir (ours: where erofs mounts its blob views)
    extra: tuple[str, ...] = ()  # further flags, last
    binary: str | None = None  # default: find_nydusd()
    subcommand: str | None = None  # "fuse", as upstream's snapshotter writes it

    def argv(self) -> list[str]:
        args = [find_nydusd(self.binary)]
        if self.subcommand is not None:
            args.append(self.subcommand)
        if self.config is not None:
            args += ["--config", os.fspath(self.config)]
        if self.localfs_dir is not None:
            args += ["-D", os.fspath(self.localfs_dir)]
        args += ["--mountpoint", os.fspath(self.mountpoint)]
        if self.bootstrap is not None:
            args += ["--bootstrap", os.fspath(self.bootstrap)]
        if self.apisock is not None:
            args += ["--apisock", os.fspath(self.apisock)]
        args += ["--log-level", self.log_level]
        if self.log_file is not None:
            args += ["--log-file", os.fspath(self.log_file)]
        if self.threads is not None:
            args += ["--thread-num", str(self.threads)]
        if self.id is not None:
            args += ["--id", self.id]
        if self.supervisor is not None:
            args += ["--supervisor", self.supervisor]
        if self.prefetch_files is not None:
            args += ["--prefetch-files", os.fspath(self.prefetch_files)]
        if self.fs_driver is not None:
            args += ["--fs-driver", self.fs_driver]
        if self.erofs_mount is not None:
            args += ["--erofs-mount", self.erofs_mount]
        if self.work_dir is not None:
            args += ["--work-dir", os.fspath(self.work_dir)]
        return args + list(self.extra)


class NydusdProcess:
    """A nydusd child: its pid, mountpoint, API and output; `stop()` ends it."""

    def __init__(
        self,
        command: NydusdCommand,
        argv: list[str],
        proc: subprocess.Popen[bytes],
        output: Path | None,
        started: float,
    ) -> None:
        self.command = command
        self.argv = argv
        self.proc = proc
        self.output = output
        self.mountpoint = Path(os.path.abspath(command.mountpoint))
        self.apisock = Path(os.path.abspath(command.apisock)) if command.apisock else None
        self.started = started  # time.monotonic() just before spawning
        #: seconds from spawning to RUNNING, once `wait_running()` saw it
        self.ready_seconds: float | None = None
        #: the erofs driver's private blob mount (from the API once RUNNING), cleared by stop()
        self.blob_dir: Path | None = None
        self._client: ApiClient | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def client(self) -> ApiClient:
        """The API client of this daemon (one connection, kept; closed by `stop()`)."""
        if self.apisock is None:
            raise NydusError("this nydusd was started without --apisock")
        if self._client is None:
            self._client = ApiClient(self.apisock)
        return self._client

    def http(self, timeout: float = 10.0) -> httpx.Client:
        """A new raw HTTP client of the API socket (for statuses and headers)."""
        if self.apisock is None:
            raise NydusError("this nydusd was started without --apisock")
        return http_client(self.apisock, timeout)

    def output_text(self) -> str:
        """What the daemon wrote so far ("" when its output is not captured)."""
        if self.output is None:
            return ""
        try:
            return self.output.read_text(errors="replace")
        except OSError:
            return ""

    def last_line(self) -> str:
        """The last line of captured output ("" when not captured)."""
        if self.output is None:
            return ""
        lines = [ln for ln in self.output_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "no log output"

    def running(self) -> bool:
        """Mounted by the mount table and RUNNING by the API (if it has one)."""
        if not is_mounted(self.mountpoint):
            return False
        if self.apisock is None:
            return True
        return self.apisock.exists() and self.client.state() == "RUNNING"

    def wait_running(
        self, timeout: float = START_TIMEOUT, poll_interval: float = POLL_INTERVAL
    ) -> None:
        """Return once RUNNING; StartError if the daemon exits or times out first."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                detail = self.last_line()
                raise StartError(
                    f"nydusd exited with code {code} before mounting {self.mountpoint}"
                    + (f": {detail}" if detail else ""),
                    self.output_text(),
                )
            if self.running():
                self.ready_seconds = time.monotonic() - self.started
                if self.apisock is not None and "erofs" in self.argv:
                    info = self.client.call("GET", "v1/daemon")
                    blob_dir = info.get("blob_dir") if isinstance(info, dict) else None
                    self.blob_dir = Path(blob_dir) if blob_dir else None
                return
            if time.monotonic() > deadline:
                raise StartError(
                    f"nydusd did not mount {self.mountpoint} within {timeout:.0f}s",
                    self.output_text(),
                )
            time.sleep(poll_interval)

    def stop(
        self,
        sig: int = signal.SIGTERM,
        timeout: float = 20.0,
        *,
        unmount: bool = True,
    ) -> int:
        """Send `sig`, wait `timeout` s, then SIGKILL; with `unmount`, clear what is left
        mounted at the mountpoint (a killed daemon leaves a dead FUSE mount). Returns the
        exit code (negative: the signal that ended it)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if unmount:
            unmount_all(self.mountpoint)
            if self.blob_dir is not None:  # a killed erofs daemon leaves its blob mount too
                unmount_all(self.blob_dir)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_nydusd(
    command: NydusdCommand,
    output: StrPath | None,
    *,
    wait: bool = True,
    timeout: float = START_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> NydusdProcess:
    """Spawn nydusd with stdout and stderr to the file `output` (truncated; None: this
    process's own); with `wait`, return once it is RUNNING, else stop it (clearing its
    mount) and raise StartError. `new_session`: in its own session, so that signals to this
    process group (a snapshotter being stopped) do not reach it."""
    argv = command.argv()
    out = Path(output) if output is not None else None
    fd: int | None = None
    if out is not None:
        try:
            # O_APPEND: the daemon may open the same file as its --log-file (which appends)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
            fd = os.open(out, flags, 0o644)
        except OSError as exc:
            raise StartError(f"cannot create nydusd output file {out}: {exc.strerror}") from exc
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT if fd is not None else None,
            env=env,
            start_new_session=new_session,
        )
    except OSError as exc:
        raise StartError(f"cannot start nydusd {argv[0]}: {exc.strerror}") from exc
    finally:
        if fd is not None:
            os.close(fd)
    d = NydusdProcess(command, argv, proc, out, t0)
    if wait:
        try:
            d.wait_running(timeout, poll_interval)
        except BaseException:
            d.stop()
            raise
    return d
