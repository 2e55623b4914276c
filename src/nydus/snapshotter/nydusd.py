"""What the snapshotter adds to the shared nydusd harness (`daemon/process.py`): liveness by
an idle API connection (interfaces.md §7.6: a daemon that hangs up on it has died), and
stopping by pid a daemon a previous snapshotter started (not our child, so no Popen)."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["pid_alive", "stop_pid", "watch"]


def pid_alive(pid: int) -> bool:
    """A process `pid` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM (SIGKILL after `timeout`) and wait until the process is gone."""
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
    """Hold an idle connection to a daemon's API socket; call `on_hangup` when the daemon
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
