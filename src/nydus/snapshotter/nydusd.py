"""Start, watch and stop one nydusd process, and talk to its HTTP API (interfaces.md §4.4).

`start_nydusd` runs the command line upstream's snapshotter uses (§7.4.3) in its own session
(a snapshotter restart must not take its daemons along) and polls `GET /api/v1/daemon` until
`state == "RUNNING"`. `watch` holds one idle API connection and reports when the daemon hangs
up on it (§7.6 liveness).

Interim: the shared nydusd start/stop helper (daemon issue) replaces the process part once it
is on main.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from nydus.snapshotter.errors import DaemonFailure

__all__ = ["NydusdApi", "find_nydusd", "nydusd_args", "start_nydusd", "stop_pid", "watch"]

log = logging.getLogger(__name__)


def find_nydusd(configured: str = "") -> str:
    if configured:
        if not os.access(configured, os.X_OK):
            raise DaemonFailure(f"nydusd {configured} is not an executable")
        return configured
    beside = Path(sys.executable).parent / "nydusd"
    if beside.exists():
        return str(beside)
    found = shutil.which("nydusd")
    if not found:
        raise DaemonFailure("nydusd not found (set --nydusd or [daemon] nydusd_path)")
    return found


class NydusdApi:
    """A client of one nydusd's API socket."""

    def __init__(self, sock: str, timeout: float = 10.0) -> None:
        self.sock = sock
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=sock), base_url="http://nydusd", timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        try:
            r = self._http.request(
                method, path, params=params, content=None if body is None else json.dumps(body)
            )
        except httpx.HTTPError as exc:
            raise DaemonFailure(f"nydusd API {self.sock}: {method} {path}: {exc}") from exc
        if r.status_code >= 400:
            try:
                msg = r.json().get("message", r.text)
            except ValueError:
                msg = r.text
            raise DaemonFailure(f"nydusd API {method} {path}: {r.status_code} {msg}")
        return r.json() if r.content else None

    def state(self) -> str:
        info = self.request("GET", "/api/v1/daemon")
        return str(info.get("state", "")) if isinstance(info, dict) else ""

    def mount(self, mountpoint: str, bootstrap: str, config: str) -> None:
        body = {"source": bootstrap, "fs_type": "rafs", "config": config}
        self.request("POST", "/api/v1/mount", params={"mountpoint": mountpoint}, body=body)

    def umount(self, mountpoint: str) -> None:
        self.request("DELETE", "/api/v1/mount", params={"mountpoint": mountpoint})


def nydusd_args(
    nydusd: str,
    *,
    config: str,
    mountpoint: str,
    apisock: str,
    bootstrap: str = "",
    threads: int = 4,
    log_level: str = "info",
    log_file: str = "",
) -> list[str]:
    """Upstream's order: subcommand, --thread-num, --config, --bootstrap, --mountpoint,
    --apisock, --log-level, --log-file, --failover-policy; empty values left out."""
    args = [nydusd, "fuse", "--thread-num", str(threads)]
    if config:
        args += ["--config", config]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    args += ["--mountpoint", mountpoint, "--apisock", apisock, "--log-level", log_level]
    if log_file:
        args += ["--log-file", log_file]
    return [*args, "--failover-policy", "resend"]


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4000))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in lines if " ERROR " in ln or "ERROR" in ln[:40]]
    return (errors or lines or [""])[-1].strip()


def start_nydusd(args: Sequence[str], apisock: str, log_file: str, timeout: float) -> int:
    """Run nydusd; wait until its API says RUNNING. Returns the pid. On failure the process
    is killed and DaemonFailure carries the daemon's last error line."""
    try:
        os.unlink(apisock)
    except FileNotFoundError:
        pass
    with open(log_file, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise DaemonFailure(f"cannot run {args[0]}: {exc.strerror}") from exc
    api = NydusdApi(apisock, timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                why = _log_tail(log_file) or f"exit status {proc.returncode}"
                raise DaemonFailure(f"nydusd exited before it was ready: {why}")
            if os.path.exists(apisock):
                try:
                    if api.state() == "RUNNING":
                        _reap_later(proc)
                        return proc.pid
                except DaemonFailure:
                    pass
            if time.monotonic() > deadline:
                raise DaemonFailure(f"nydusd was not RUNNING after {timeout:.0f}s (log {log_file})")
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        api.close()


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    """A child that exits must not stay a zombie (liveness checks look at its pid)."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM (then SIGKILL after `timeout`) and wait for the process to be gone."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline += timeout
        time.sleep(0.05)


def watch(apisock: str, on_hangup: Callable[[], None], stop: threading.Event) -> threading.Thread:
    """Hold an idle connection to the daemon's API socket; call `on_hangup` when the daemon
    closes it (it died), unless `stop` is set first."""

    def run() -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(apisock)
        except OSError:
            if not stop.is_set():
                on_hangup()
            return
        with s:
            poller = select.poll()
            poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
            while not stop.is_set():
                if poller.poll(500):
                    try:
                        data = s.recv(1, socket.MSG_PEEK)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    time.sleep(0.5)
        if not stop.is_set():
            on_hangup()

    t = threading.Thread(target=run, name=f"watch-{os.path.basename(apisock)}", daemon=True)
    t.start()
    return t
