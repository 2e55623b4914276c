"""Start our `nydusd` as a subprocess on a real FUSE mount, and always clean up after it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nydus.daemon.client import http_client
from nydus.daemon.process import NydusdCommand, NydusdProcess, StartError, start_nydusd
from nydus.kernel.mounts import is_mounted, unmount_all
from tests.helpers.env import fixture_needs

NYDUSD = str(Path(sys.executable).parent / "nydusd")
START_TIMEOUT = 30.0

__all__ = [
    "NYDUSD",
    "Daemon",
    "api_client",
    "copy_tree",
    "fill_cache_then_flip",
    "findmnt",
    "force_unmount",
    "is_mounted",
    "localfs_config",
    "nydusd",
    "run_nydusd",
]


def findmnt(path: str | os.PathLike[str]) -> str:
    """util-linux's view of the mount at `path` (an oracle beside our mountinfo parser)."""
    r = subprocess.run(
        ["findmnt", "-n", "--mountpoint", os.path.abspath(path)], capture_output=True, text=True
    )
    return r.stdout.strip()


def force_unmount(path: str | os.PathLike[str]) -> None:
    """Clear every mount left at `path`."""
    unmount_all(path)


def api_client(sock: str | os.PathLike[str]) -> httpx.Client:
    return http_client(sock)


@dataclass
class Daemon:
    """A running nydusd subprocess (a `NydusdProcess`) as the tests use it."""

    process: NydusdProcess
    config_path: Path | None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def mountpoint(self) -> Path:
        return self.process.mountpoint

    @property
    def apisock(self) -> Path:
        sock = self.process.apisock
        assert sock is not None  # the fixture always passes --apisock
        return sock

    @property
    def log_path(self) -> Path:
        out = self.process.output
        assert out is not None  # the fixture always captures the output
        return out

    @property
    def args(self) -> list[str]:
        return self.process.argv

    def log(self) -> str:
        return self.process.output_text()

    def api(self) -> httpx.Client:
        return self.process.http()

    def get(self, path: str, **params: str) -> httpx.Response:
        with self.api() as c:
            return c.get(path, params=params or None)

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal and wait; what the daemon leaves mounted stays (tests look at it)."""
        return self.process.stop(sig, timeout, unmount=False)

    def cleanup(self) -> None:
        self.process.stop(signal.SIGTERM, 15.0)


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


@pytest.fixture
@fixture_needs(pytest.mark.root("FUSE mounts"), pytest.mark.kernel("fuse"))
def nydusd(tmp_path: Path) -> Iterator[StartFn]:
    """`start(bootstrap, config, *extra_args, name=...)` -> a RUNNING, mounted `Daemon`.

    `config` is a dict (written as JSON), a path, or None (then pass `-D DIR` in extra_args).
    Every daemon started here is stopped and its mountpoint cleared at teardown.
    """
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
        try:
            mnt.mkdir()
        except FileExistsError:  # also a dead mount a killed daemon left here
            pass
        sock = base / "api.sock"
        cfg_path: Path | None = None
        if isinstance(config, dict):
            cfg_path = base / "config.json"
            cfg_path.write_text(json.dumps(config))
        elif config is not None:
            cfg_path = Path(config)
        command = NydusdCommand(
            mnt,
            bootstrap,
            sock,
            config=cfg_path,
            log_level=log_level,
            extra=tuple(extra),
            binary=NYDUSD,
        )
        try:
            process = start_nydusd(
                command, base / "nydusd.log", wait=wait, timeout=START_TIMEOUT, poll_interval=0.05
            )
        except StartError as exc:
            raise AssertionError(f"{exc}:\n{exc.output}") from None
        d = Daemon(process, cfg_path)
        started.append(d)
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


def fill_cache_then_flip(
    start: StartFn, boot: Path, blobs: Path, cache: Path, blob_id: str, *, validate: bool
) -> bytes:
    """Read /lib.rs of the golden v6 image once through a daemon with a blob cache at
    `cache`, stop it, flip byte 10 of the blob's cache data file; returns the good bytes."""
    d = start(boot, localfs_config(blobs, validate=validate, cache_dir=cache), name="fill")
    good = (d.mountpoint / "lib.rs").read_bytes()
    d.stop()
    data = cache / f"{blob_id}.blob.data"
    view = bytearray(data.read_bytes())
    view[10] ^= 0xFF
    data.write_bytes(bytes(view))
    return good
