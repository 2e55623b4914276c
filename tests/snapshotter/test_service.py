"""containerd's snapshot semantics through our gRPC service (a real `containerd-nydus-grpc`
process on a unix socket): kinds, parent chains, commit, remove, labels, usage, List filters,
error codes, and the metadata surviving a restart."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from tests.snapshotter.client import SnapshotsClient, SnapshotterProcess

ACTIVE, VIEW, COMMITTED = 2, 1, 3


def code_of(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()  # type: ignore[attr-defined]


def opts(mount) -> dict[str, str]:
    return dict(o.split("=", 1) for o in mount.options if "=" in o)


def test_chain_mounts_commit_and_kinds(client: SnapshotsClient, snapshotter_proc) -> None:
    root = snapshotter_proc.root
    [m] = client.prepare("l1", labels={"a": "1"})
    assert (m.type, list(m.options)) == ("bind", ["rw", "rbind"])
    fs1 = Path(m.source)
    assert fs1.parent.parent == root / "snapshots" and fs1.name == "fs"
    (fs1 / "hello").write_bytes(b"x" * 10000)
    client.commit("c1", "l1", labels={"b": "2"})
    info = client.stat("c1")
    assert (info.name, info.parent, info.kind) == ("c1", "", COMMITTED)
    assert dict(info.labels) == {"b": "2"}  # commit labels replace, as containerd's store
    with pytest.raises(grpc.RpcError) as e:
        client.stat("l1")
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    blocks = os.lstat(fs1).st_blocks + os.lstat(fs1 / "hello").st_blocks
    assert os.lstat(fs1 / "hello").st_blocks * 512 >= 10000
    assert client.usage("c1") == (blocks * 512, 2)  # the file and its directory

    [m2] = client.prepare("l2", "c1")
    o = opts(m2)
    assert m2.type == "overlay" and o["lowerdir"] == str(fs1)
    assert Path(o["upperdir"]).name == "fs" and Path(o["workdir"]).name == "work"
    client.commit("c2", "l2")
    [m3] = client.prepare("active", "c2")
    lowers = opts(m3)["lowerdir"].split(":")
    assert lowers[1] == str(fs1) and len(lowers) == 2  # nearest parent first
    assert client.mounts("active") == [m3]
    [v] = client.view("v", "c1")
    assert (v.type, v.source, list(v.options)) == ("bind", str(fs1), ["ro", "rbind"])
    [v2] = client.view("v2", "c2")
    assert v2.type == "overlay" and list(v2.options) == ["lowerdir=" + ":".join(lowers)]
    kinds = {i.name: (i.kind, i.parent) for i in client.list()}
    assert kinds == {
        "c1": (COMMITTED, ""),
        "c2": (COMMITTED, "c1"),
        "active": (ACTIVE, "c2"),
        "v": (VIEW, "c1"),
        "v2": (VIEW, "c2"),
    }


def test_errors_leave_nothing_behind(client: SnapshotsClient, snapshotter_proc) -> None:
    snaps = snapshotter_proc.root / "snapshots"
    cases = [
        (lambda: client.prepare("k", "missing"), grpc.StatusCode.NOT_FOUND, "missing"),
        (lambda: client.prepare(""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (lambda: client.mounts("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.remove("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.commit("x", "nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.prepare("k", labels={"l": "v" * 5000}), grpc.StatusCode.INVALID_ARGUMENT,
         "4096"),
    ]  # fmt: skip
    for call, code, word in cases:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert code_of(e) == code and word in e.value.details()  # type: ignore[attr-defined]
    assert os.listdir(snaps) == []
    client.prepare("a")
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("a")
    assert code_of(e) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:
        client.prepare("b", "a")  # parent must be committed
    assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION
    client.commit("ca", "a")
    with pytest.raises(grpc.RpcError) as e:
        client.commit("cb", "ca")  # commit of a committed snapshot
    assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION
    assert "committed" in e.value.details()  # type: ignore[attr-defined]
    client.view("v", "ca")
    with pytest.raises(grpc.RpcError) as e:
        client.commit("cv", "v")
    assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        client.remove("ca")  # has a child
    assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION
    client.prepare("b2")
    with pytest.raises(grpc.RpcError) as e:
        client.commit("ca", "b2")  # name taken
    assert code_of(e) == grpc.StatusCode.ALREADY_EXISTS
    assert client.stat("b2").kind == ACTIVE
    assert len(os.listdir(snaps)) == 3


def test_update_list_filters_remove_cleanup(client: SnapshotsClient, snapshotter_proc) -> None:
    snaps = snapshotter_proc.root / "snapshots"
    client.prepare("a", labels={"x": "1", "y": "2"})
    client.commit("sha256:aa", "a", {"containerd.io/snapshot.ref": "sha256:aa", "x": "1"})
    client.prepare("b", "sha256:aa", labels={"x": "2"})
    info = client.update("sha256:aa", {"z": "3"}, ["labels.z", "labels.x"])
    assert dict(info.labels) == {"containerd.io/snapshot.ref": "sha256:aa", "z": "3"}
    assert client.update("b", {"only": "this"}).labels == {"only": "this"}
    with pytest.raises(grpc.RpcError) as e:
        client.update("b", {}, ["parent"])
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    names = lambda *f: sorted(i.name for i in client.list(*f))  # noqa: E731
    # containerd's own query after a remote snapshotter's AlreadyExists
    assert names('labels."containerd.io/snapshot.ref"==sha256:aa,parent==""') == ["sha256:aa"]
    assert names("kind==active") == ["b"]
    assert names("kind==active", "name==sha256:aa") == ["b", "sha256:aa"]
    assert names('parent=="sha256:aa"') == ["b"]
    assert names("labels.only") == ["b"]
    assert names("name~=^sha") == ["sha256:aa"]
    assert names("name!=b") == ["sha256:aa"]
    with pytest.raises(grpc.RpcError) as e:
        client.list('name=="unterminated')
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    client.remove("b")
    client.remove("sha256:aa")
    assert client.list() == [] and os.listdir(snaps) == []
    (snaps / "77").mkdir()  # an orphan dir (a crash between rename and commit)
    (snaps / "77" / "f").write_text("x")
    client.cleanup()
    assert os.listdir(snaps) == []


def test_metadata_survives_restart(snapshotter_proc: SnapshotterProcess) -> None:
    c = snapshotter_proc.client
    assert c is not None
    [m] = c.prepare("l1")
    Path(m.source, "f").write_text("data")
    c.commit("c1", "l1", {"k": "v"})
    c.prepare("work", "c1", {"w": "1"})
    assert snapshotter_proc.stop() == 0
    c = snapshotter_proc.start()
    assert {i.name: dict(i.labels) for i in c.list()} == {"c1": {"k": "v"}, "work": {"w": "1"}}
    [m] = c.mounts("work")
    assert Path(opts(m)["lowerdir"], "f").read_text() == "data"
