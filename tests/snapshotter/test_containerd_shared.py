"""Shared daemon mode end to end: one nydusd serves every image (API mounts at /<id>), three
containers of one image each see their own writes, removal detaches the image only."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.snapshotter.containerd import BIG_DATA, OS_RELEASE
from tests.snapshotter.env import Env, nydusd_pids, require_containerd, start_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_containerd()
    e = start_env(tmp_path_factory.mktemp("shared"), "--daemon-mode", "shared")
    yield e
    e.stop()


def _daemon_info(env: Env) -> dict:
    sock = env.root / "socket" / "shared_daemon" / "api.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
        return c.get("http://nydusd/api/v1/daemon").json()


def test_three_containers_one_daemon(env: Env) -> None:
    env.rpull(env.nydus_ref)
    names = ("s1", "s2", "s3")
    try:
        for n in names:
            env.ctr("run", "-d", "--snapshotter", "nydus", env.nydus_ref, n, "sh", "-c",
                    f"echo {n} > /etc/mine; sleep 600")  # fmt: skip
        assert len(nydusd_pids(env.root)) == 1
        for i, n in enumerate(names):
            for k in range(100):  # the detached shell writes its file a moment after start
                got = env.ctr("tasks", "exec", "--exec-id", f"x{i}-{k}", n, "cat", "/etc/mine",
                              check=False).stdout  # fmt: skip
                if got:
                    break
                time.sleep(0.1)
            assert got == f"{n}\n"  # its own upper dir
            out = env.ctr("tasks", "exec", "--exec-id", f"y{i}", n, "sha256sum",
                          "/data/big").stdout  # fmt: skip
            assert out.split()[0] == hashlib.sha256(BIG_DATA).hexdigest()
        info = _daemon_info(env)
        [mp] = info["backend_collection"]
        assert mp.startswith("/") and (env.root / "mnt" / mp[1:] / "etc" / "os-release").exists()
        assert env.run(env.nydus_ref, "s4", "cat", "/etc/os-release") == OS_RELEASE.decode()
    finally:
        env.containerd.remove_all()
    [pid] = nydusd_pids(env.root)
    assert sorted(os.listdir(env.root / "snapshots")) == []
    assert _daemon_info(env)["backend_collection"] == {}  # detached, daemon still serving
    assert nydusd_pids(env.root) == [pid]
    assert os.listdir(env.root / "cache") == []


def test_shared_daemon_restart_remounts_images(env: Env) -> None:
    env.rpull(env.nydus_ref)
    try:
        assert env.run(env.nydus_ref, "r1", "cat", "/etc/os-release") == OS_RELEASE.decode()
        [pid] = nydusd_pids(env.root)
        before = env.snapshotter.log().count("restarted")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while env.snapshotter.log().count("restarted") == before:
            assert time.monotonic() < deadline, "the shared nydusd was not restarted"
            time.sleep(0.1)
        [new] = nydusd_pids(env.root)
        assert new != pid and len(_daemon_info(env)["backend_collection"]) == 1  # re-mounted
        assert env.run(env.nydus_ref, "r2", "cat", "/etc/os-release") == OS_RELEASE.decode()
    finally:
        env.containerd.remove_all()
    assert _daemon_info(env)["backend_collection"] == {}
