"""Start our `nydusd` as a subprocess on a real FUSE mount, and always clean up after it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

NYDUSD = str(Path(sys.executable).parent / "nydusd")
START_TIMEOUT = 30.0


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a mountpoint per /proc/self/mountinfo (works for dead FUSE mounts)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ")[4].decode("unicode_escape")
            if mp == target:
                return True
    return False


def findmnt(path: str | os.PathLike[str]) -> str:
    r = subprocess.run(
        ["findmnt", "-n", "--mountpoint", os.path.abspath(path)], capture_output=True, text=True
    )
    return r.stdout.strip()


def force_unmount(path: str | os.PathLike[str]) -> None:
    """fusermount3 -u, then umount -l, until the path is no longer a mountpoint."""
    for cmd in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if not is_mounted(path):
            return
        subprocess.run([*cmd, os.path.abspath(path)], capture_output=True)


def api_client(sock: str | os.PathLike[str]) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=os.fspath(sock)),
        base_url="http://localhost",
        timeout=10.0,
    )


@dataclass
class Daemon:
    """A running nydusd subprocess."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path
    apisock: Path
    log_path: Path
    config_path: Path | None
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self) -> httpx.Client:
        return api_client(self.apisock)

    def get(self, path: str, **params: str) -> httpx.Response:
        with self.api() as c:
            return c.get(path, params=params or None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        force_unmount(self.mountpoint)


def localfs_config(
    blob_dir: str | os.PathLike[str],
    *,
    validate: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The v1 JSON the seed writes, plus options."""
    cfg: dict[str, Any] = {
        "device": {"backend": {"type": "localfs", "config": {"dir": os.fspath(blob_dir)}}},
        "mode": "direct",
        "digest_validate": validate,
    }
    if cache_dir is not None:
        cfg["device"]["cache"] = {"type": "blobcache", "config": {"work_dir": os.fspath(cache_dir)}}
    cfg.update(extra)
    return cfg


StartFn = Callable[..., Daemon]


def _wait_ready(d: Daemon) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise AssertionError(f"nydusd exited with {d.proc.returncode}:\n{d.log()}")
        if is_mounted(d.mountpoint) and d.apisock.exists():
            try:
                r = d.get("/api/v1/daemon")
                if r.status_code == 200 and r.json()["state"] == "RUNNING":
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"nydusd did not become RUNNING in {START_TIMEOUT}s:\n{d.log()}")


@pytest.fixture
def nydusd(tmp_path: Path) -> Iterator[StartFn]:
    """`start(bootstrap, config, *extra_args, name=...)` -> a RUNNING, mounted `Daemon`.

    `config` is a dict (written as JSON), a path, or None (then pass `-D DIR` in extra_args).
    Every daemon started here is stopped and its mountpoint cleared at teardown.
    """
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("these tests need root and /dev/fuse")
    started: list[Daemon] = []
    counter = [0]

    def start(
        bootstrap: str | os.PathLike[str],
        config: dict[str, Any] | str | os.PathLike[str] | None,
        *extra: str,
        name: str | None = None,
        wait: bool = True,
        log_level: str = "info",
    ) -> Daemon:
        counter[0] += 1
        name = name or f"d{counter[0]}"
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        mnt = base / "mnt"
        mnt.mkdir(exist_ok=True)
        sock = base / "api.sock"
        cfg_path: Path | None = None
        if isinstance(config, dict):
            cfg_path = base / "config.json"
            cfg_path.write_text(json.dumps(config))
        elif config is not None:
            cfg_path = Path(config)
        args = [NYDUSD]
        if cfg_path is not None:
            args += ["--config", str(cfg_path)]
        args += [
            "--mountpoint",
            str(mnt),
            "--bootstrap",
            os.fspath(bootstrap),
            "--apisock",
            str(sock),
            "--log-level",
            log_level,
            *extra,
        ]
        log_path = base / "nydusd.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
        d = Daemon(proc, mnt, sock, log_path, cfg_path, args)
        started.append(d)
        if wait:
            _wait_ready(d)
        return d

    yield start
    for d in started:
        d.cleanup()


def run_nydusd(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run nydusd to completion (for inputs that must be refused)."""
    return subprocess.run([NYDUSD, *args], capture_output=True, text=True, timeout=timeout)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    dst.chmod(0o755)
    return dst
