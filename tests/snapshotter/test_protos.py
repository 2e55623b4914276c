"""The committed protobuf modules are what protoc makes of the committed .proto files, and
those carry containerd's names and field numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nydus.snapshotter.api import mount_pb2
from nydus.snapshotter.api import snapshots_pb2 as pb

API = Path(__file__).resolve().parents[2] / "src" / "nydus" / "snapshotter" / "api"


def test_committed_modules_match_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a test dependency) not installed")
    src = tmp_path / "nydus" / "snapshotter" / "api"
    src.mkdir(parents=True)
    for proto in ("mount.proto", "snapshots.proto"):
        shutil.copy(API / proto, src / proto)
    protos = ["nydus/snapshotter/api/mount.proto", "nydus/snapshotter/api/snapshots.proto"]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.",
         "--pyi_out=.", *protos],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    for name in ("mount_pb2.py", "mount_pb2.pyi", "snapshots_pb2.py", "snapshots_pb2.pyi"):
        assert (src / name).read_text() == (API / name).read_text(), (
            f"{name} is stale: run scripts/gen_protos.sh"
        )


def test_wire_names_and_numbers() -> None:
    svc = pb.DESCRIPTOR.services_by_name["Snapshots"]
    assert svc.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert [m.name for m in svc.methods] == [
        "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage",
        "Cleanup",
    ]  # fmt: skip
    assert svc.methods_by_name["List"].server_streaming
    fields = lambda msg: {f.name: f.number for f in msg.DESCRIPTOR.fields}  # noqa: E731
    assert fields(mount_pb2.Mount) == {"type": 1, "source": 2, "target": 3, "options": 4}
    assert mount_pb2.Mount.DESCRIPTOR.full_name == "containerd.types.Mount"
    assert fields(pb.PrepareSnapshotRequest) == {
        "snapshotter": 1, "key": 2, "parent": 3, "labels": 4,
    }  # fmt: skip
    assert fields(pb.CommitSnapshotRequest) == {"snapshotter": 1, "name": 2, "key": 3, "labels": 4}
    assert fields(pb.Info) == {
        "name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6,
    }  # fmt: skip
    assert fields(pb.UpdateSnapshotRequest) == {"snapshotter": 1, "info": 2, "update_mask": 3}
    assert fields(pb.UsageResponse) == {"size": 1, "inodes": 2}
    assert {v.name: v.number for v in pb.Kind.DESCRIPTOR.values} == {
        "UNKNOWN": 0, "VIEW": 1, "ACTIVE": 2, "COMMITTED": 3,
    }  # fmt: skip
    # a message as containerd's Go client encodes it: key "k" (field 2), parent "p" (field 3)
    assert pb.PrepareSnapshotRequest.FromString(b"\x12\x01k\x1a\x01p").parent == "p"
