"""End to end with Debian's containerd, runc and ctr-remote (dedicated daemon mode): a Nydus
image pulled with `ctr-remote image rpull` runs with `ctr run`, its data blobs are read only by
range; an OCI image runs on the same snapshotter; a snapshotter restart keeps running
containers working; a killed nydusd is restarted; removal leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.snapshotter.client import SnapshotsClient
from tests.snapshotter.containerd import BIG_DATA, OS_RELEASE
from tests.snapshotter.env import (
    Env,
    blob_requests,
    nydus_layers,
    nydusd_pids,
    require_containerd,
    start_env,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_containerd()
    e = start_env(tmp_path_factory.mktemp("ctd"))
    yield e
    e.stop()


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _leftovers(env: Env) -> tuple[list[str], list[str], list[int]]:
    snaps = sorted(os.listdir(env.root / "snapshots"))
    cache = sorted(os.listdir(env.root / "cache")) if (env.root / "cache").exists() else []
    return snaps, cache, nydusd_pids(env.root)


def _remove_image(env: Env, ref: str) -> None:
    env.ctr("images", "rm", "--sync", ref)
    for row in reversed(env.snapshots()):  # whatever containerd's GC left (none expected)
        env.ctr("snapshots", "--snapshotter", "nydus", "rm", row[0], check=False)


def test_nydus_image_runs_lazily(env: Env) -> None:
    mark = env.registry.log_path.stat().st_size
    env.rpull(env.nydus_ref)
    rows = env.snapshots()
    assert len(rows) == 3 and all(r[-1] == "Committed" for r in rows)  # 2 blobs + bootstrap
    dirs = sorted(int(d) for d in os.listdir(env.root / "snapshots"))
    contents = {d: sorted(os.listdir(env.root / "snapshots" / str(d) / "fs")) for d in dirs}
    assert [contents[d] for d in dirs[:2]] == [[], []]  # data layers: committed empty
    assert (env.root / "snapshots" / str(dirs[2]) / "fs" / "image" / "image.boot").is_file()
    assert nydusd_pids(env.root) == []  # no daemon until a container needs one

    assert env.run(env.nydus_ref, "c1", "cat", "/etc/os-release") == OS_RELEASE.decode()
    out = env.run(env.nydus_ref, "c2", "sha256sum", "/data/big")
    assert out.split()[0] == hashlib.sha256(BIG_DATA).hexdigest()
    assert len(nydusd_pids(env.root)) == 1  # dedicated: one per image, reused

    # the data blobs were only ever read by range (206), never downloaded whole (200)
    data_blobs, [boot] = nydus_layers(env.registry, env.nydus_ref)
    gets = [(d, st) for m, d, st, _ in blob_requests(env.registry, mark) if m == "GET"]
    ranged = {d for d, st in gets if st == 206}
    full = {d for d, st in gets if st == 200}
    assert ranged and ranged <= set(data_blobs), gets
    assert boot in full and not (full & set(data_blobs)), f"blobs downloaded in full: {gets}"

    # a layer committed above the bootstrap layer (a committed container) stays visible above
    # the nydusd mount in the next container's lowerdir
    meta = rows[-1][0]  # the bootstrap layer's chain id, containerd's key without namespace
    with SnapshotsClient(env.snapshotter.sock) as c:
        meta_key = next(i.name for i in c.list() if i.name.endswith(meta))
        [m] = c.prepare("t/upper", meta_key)
        upper = dict(o.split("=", 1) for o in m.options if "=" in o)
        Path(upper["upperdir"], "added").write_text("committed\n")
        c.commit("t/committed", "t/upper")
        [m] = c.prepare("t/top", "t/committed")
        lowers = dict(o.split("=", 1) for o in m.options if "=" in o)["lowerdir"].split(":")
        assert lowers == [upper["upperdir"], upper["lowerdir"]]
        assert Path(lowers[0], "added").read_text() == "committed\n"
        assert Path(lowers[1], "etc", "os-release").read_bytes() == OS_RELEASE
        for key in ("t/top", "t/committed"):
            c.remove(key)

    _remove_image(env, env.nydus_ref)
    assert _leftovers(env) == ([], [], [])


def test_oci_image_runs_and_is_removed(env: Env) -> None:
    env.ctr("image", "pull", "--plain-http", "--snapshotter", "nydus", env.oci_ref)
    assert env.run(env.oci_ref, "o1", "cat", "/etc/os-release") == OS_RELEASE.decode()
    assert len(env.snapshots()) == 2 and nydusd_pids(env.root) == []
    _remove_image(env, env.oci_ref)
    assert _leftovers(env) == ([], [], [])


def test_snapshotter_restart_and_nydusd_recovery(env: Env) -> None:
    env.rpull(env.nydus_ref)
    env.ctr("run", "-d", "--snapshotter", "nydus", env.nydus_ref, "long", "sleep", "600")
    try:
        want = hashlib.sha256(BIG_DATA).hexdigest()

        def read_in_long(n: int) -> str:
            return env.ctr("tasks", "exec", "--exec-id", f"e{n}", "long", "sha256sum",
                           "/data/big").stdout.split()[0]  # fmt: skip

        assert read_in_long(1) == want
        [pid] = nydusd_pids(env.root)
        env.restart_snapshotter()  # SIGTERM: the daemons stay
        assert read_in_long(2) == want  # the running container still reads its files
        assert env.run(env.nydus_ref, "after", "cat", "/etc/os-release") == OS_RELEASE.decode()
        assert nydusd_pids(env.root) == [pid]  # re-attached, not restarted

        os.kill(pid, signal.SIGKILL)  # liveness: the snapshotter notices and restarts it
        _wait(lambda: "restarted" in env.snapshotter.log(), 60, "the nydusd restart")
        assert "hung up its API socket" in env.snapshotter.log()
        [new_pid] = nydusd_pids(env.root)
        assert new_pid != pid
        assert env.run(env.nydus_ref, "new", "cat", "/etc/os-release") == OS_RELEASE.decode()
    finally:
        env.ctr("tasks", "kill", "-s", "SIGKILL", "long", check=False)
        _wait(lambda: "STOPPED" in env.ctr("tasks", "ls").stdout or
              "long" not in env.ctr("tasks", "ls").stdout, 30, "the task to stop")  # fmt: skip
        env.ctr("tasks", "delete", "long", check=False)
        env.ctr("containers", "delete", "long", check=False)
    _remove_image(env, env.nydus_ref)
    assert _leftovers(env) == ([], [], [])


def test_snapshot_dirs_hold_only_our_layout(env: Env) -> None:
    """The root has upstream's layout and nothing of a removed image's daemon remains."""
    names = sorted(p.name for p in Path(env.root).iterdir())
    assert {"snapshots", "cache", "metadata.db"} <= set(names)
    for sub in ("config", "socket", "logs"):
        assert not (env.root / sub).exists() or os.listdir(env.root / sub) == []
