"""A Snapshots gRPC client for tests and benchmarks, and the `containerd-nydus-grpc` process
they run (started on a unix socket, stopped with SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from nydus.snapshotter.api import snapshots_pb2 as pb

SERVICE = "/containerd.services.snapshots.v1.Snapshots/"
SNAPSHOTTER_BIN = str(Path(sys.executable).parent / "containerd-nydus-grpc")


class SnapshotsClient:
    def __init__(self, sock: str | Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{sock}")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, req: Any, resp: Any, timeout: float = 60) -> Any:
        fn = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp.FromString,
        )
        return fn(req, timeout=timeout)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> Any:
        req = pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels or {})
        return list(self._call("Prepare", req, pb.PrepareSnapshotResponse).mounts)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> Any:
        req = pb.ViewSnapshotRequest(key=key, parent=parent, labels=labels or {})
        return list(self._call("View", req, pb.ViewSnapshotResponse).mounts)

    def mounts(self, key: str) -> Any:
        return list(self._call("Mounts", pb.MountsRequest(key=key), pb.MountsResponse).mounts)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        req = pb.CommitSnapshotRequest(name=name, key=key, labels=labels or {})
        self._call("Commit", req, empty_pb2.Empty)

    def remove(self, key: str) -> None:
        self._call("Remove", pb.RemoveSnapshotRequest(key=key), empty_pb2.Empty)

    def stat(self, key: str) -> Any:
        return self._call("Stat", pb.StatSnapshotRequest(key=key), pb.StatSnapshotResponse).info

    def update(self, name: str, labels: Mapping[str, str], paths: list[str] | None = None) -> Any:
        req = pb.UpdateSnapshotRequest(info=pb.Info(name=name, labels=labels))
        if paths is not None:
            req.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        return self._call("Update", req, pb.UpdateSnapshotResponse).info

    def list(self, *filters: str) -> list[Any]:
        fn = self.channel.unary_stream(
            SERVICE + "List",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ListSnapshotsResponse.FromString,
        )
        out = []
        for resp in fn(pb.ListSnapshotsRequest(filters=list(filters)), timeout=60):
            out.extend(resp.info)
        return out

    def usage(self, key: str) -> tuple[int, int]:
        r = self._call("Usage", pb.UsageRequest(key=key), pb.UsageResponse)
        return r.size, r.inodes

    def cleanup(self) -> None:
        self._call("Cleanup", pb.CleanupRequest(), empty_pb2.Empty)


@dataclass
class SnapshotterProcess:
    root: Path
    sock: Path
    log_path: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    client: SnapshotsClient | None = field(default=None, repr=False)

    def start(self, timeout: float = 30) -> SnapshotsClient:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SNAPSHOTTER_BIN, "--root", str(self.root), "--address", str(self.sock),
                 "--log-level", "debug", *self.args],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("containerd-nydus-grpc did not start:\n" + self.log())
            time.sleep(0.05)
        self.client = SnapshotsClient(self.sock)
        return self.client

    def stop(self) -> int:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def start_snapshotter(workdir: Path, *args: str) -> SnapshotterProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    sp = SnapshotterProcess(
        workdir / "root", workdir / "nydus.sock", workdir / "snapshotter.log", list(args)
    )
    sp.start()
    return sp
