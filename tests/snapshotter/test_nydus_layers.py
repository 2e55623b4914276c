"""Nydus layer decisions through the gRPC API, without containerd: a data-blob layer is
committed empty and answered AlreadyExists; a container above a bootstrap layer fails cleanly
(nothing created, no daemon left) on a missing bootstrap, a missing image reference, or an
unreachable registry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.registry_fixture import free_port
from tests.snapshotter.client import SnapshotsClient
from tests.snapshotter.env import nydusd_pids

REF = "containerd.io/snapshot.ref"
BLOB = "containerd.io/snapshot/nydus-blob"
BOOT = "containerd.io/snapshot/nydus-bootstrap"
STARGZ_REF = "containerd.io/snapshot/remote/stargz.reference"


def _code(e: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str]:
    return e.value.code(), e.value.details()  # type: ignore[attr-defined]


def test_blob_layer_is_skipped(client: SnapshotsClient, snapshotter_proc) -> None:
    labels = {REF: "sha256:c1", BLOB: "true", STARGZ_REF: "r/x:1"}
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("extract-1", "", labels)
    code, msg = _code(e)
    assert code == grpc.StatusCode.ALREADY_EXISTS and "sha256:c1" in msg
    info = client.stat("sha256:c1")
    assert info.kind == 3 and dict(info.labels) == labels  # as containerd's Walk filter needs
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("extract-2", "sha256:c1", {REF: "sha256:c2", BLOB: "true"})
    assert _code(e)[0] == grpc.StatusCode.ALREADY_EXISTS
    assert client.stat("sha256:c2").parent == "sha256:c1"
    with pytest.raises(grpc.RpcError) as e:  # again: still AlreadyExists, nothing new
        client.prepare("extract-3", "sha256:c1", {REF: "sha256:c2", BLOB: "true"})
    assert _code(e)[0] == grpc.StatusCode.ALREADY_EXISTS
    assert sorted(i.name for i in client.list()) == ["sha256:c1", "sha256:c2"]
    snaps = snapshotter_proc.root / "snapshots"
    assert sorted(os.listdir(snaps)) == ["1", "2"]
    assert os.listdir(snaps / "1" / "fs") == [] and os.listdir(snaps / "2" / "fs") == []


def _bootstrap_layer(client: SnapshotsClient, name: str, labels: dict, boot: Path | None) -> None:
    [m] = client.prepare("extract-" + name, "", {REF: name, BOOT: "true", **labels})
    if boot is not None:
        (Path(m.source) / "image").mkdir()
        (Path(m.source) / "image" / "image.boot").write_bytes(boot.read_bytes())
    client.commit(name, "extract-" + name, {REF: name, BOOT: "true", **labels})


@pytest.fixture
def bootstrap(tmp_path: Path, nydus_image: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("hello\n")
    boot = tmp_path / "image.boot"
    subprocess.run(
        [nydus_image, "create", "--bootstrap", str(boot), "--blob", str(tmp_path / "blob"),
         str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    return boot


def test_container_over_bad_bootstrap_layers(
    client: SnapshotsClient, snapshotter_proc, bootstrap: Path
) -> None:
    root = snapshotter_proc.root
    _bootstrap_layer(client, "noboot", {STARGZ_REF: "127.0.0.1:1/x:1"}, None)
    _bootstrap_layer(client, "noref", {}, bootstrap)
    dead = f"127.0.0.1:{free_port()}/img:v1"  # nothing listens there
    _bootstrap_layer(client, "unreachable", {STARGZ_REF: dead}, bootstrap)
    before = sorted(os.listdir(root / "snapshots"))
    cases = [
        ("noboot", grpc.StatusCode.INVALID_ARGUMENT, "has no image/image.boot"),
        ("noref", grpc.StatusCode.INVALID_ARGUMENT, "no image reference label"),
        ("unreachable", grpc.StatusCode.UNAVAILABLE, "registry 127.0.0.1:"),
    ]
    for parent, want, words in cases:
        with pytest.raises(grpc.RpcError) as e:
            client.prepare("container-" + parent, parent)
        code, msg = _code(e)
        assert code == want and words in msg, (parent, code, msg)
        with pytest.raises(grpc.RpcError) as e:
            client.stat("container-" + parent)
        assert _code(e)[0] == grpc.StatusCode.NOT_FOUND
    assert sorted(os.listdir(root / "snapshots")) == before  # nothing half-made
    assert nydusd_pids(root) == []
    for sub in ("config", "socket"):
        assert not (root / sub).exists() or os.listdir(root / sub) == []
