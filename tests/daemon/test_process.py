"""`nydus.daemon.process`: the one nydusd start/stop harness (library, tests, benchmarks)."""

from __future__ import annotations

import json
import signal

import pytest

from nydus.daemon.process import NydusdCommand, StartError, start_nydusd
from nydus.kernel import is_mounted
from tests.daemon.conftest import NYDUSD, localfs_config
from tests.golden import golden_path


def test_command_line():
    c = NydusdCommand(
        "/m",
        "/b",
        "/s.sock",
        config="/c.json",
        log_level="warn",
        log_file="/l.log",
        threads=2,
        id="d1",
        supervisor="/sup",
        prefetch_files="/p",
        extra=("--rlimit-nofile", "0"),
        binary="/bin/nydusd",
    )
    assert c.argv() == [
        "/bin/nydusd",
        "--config",
        "/c.json",
        "--mountpoint",
        "/m",
        "--bootstrap",
        "/b",
        "--apisock",
        "/s.sock",
        "--log-level",
        "warn",
        "--log-file",
        "/l.log",
        "--thread-num",
        "2",
        "--id",
        "d1",
        "--supervisor",
        "/sup",
        "--prefetch-files",
        "/p",
        "--rlimit-nofile",
        "0",
    ]
    assert NydusdCommand("/m", "/b", "/s", localfs_dir="/d", binary="x").argv()[1:3] == ["-D", "/d"]
    # an API-mounts daemon (no bootstrap), with upstream's `fuse` subcommand
    assert NydusdCommand("/m", None, "/s", binary="x", subcommand="fuse").argv() == [
        "x", "fuse", "--mountpoint", "/m", "--apisock", "/s", "--log-level", "info",
    ]  # fmt: skip


@pytest.fixture
def command(tmp_path):
    (tmp_path / "mnt").mkdir()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(localfs_config(golden_path("upstream", "v6", "blobs"))))
    return NydusdCommand(
        tmp_path / "mnt",
        golden_path("upstream", "v6", "bootstrap"),
        tmp_path / "api.sock",
        config=cfg,
        binary=NYDUSD,
    )


def test_start_then_kill_clears_the_mount(command, tmp_path, require_root):
    d = start_nydusd(command, tmp_path / "out.log")
    try:
        assert d.running() and d.ready_seconds is not None and d.ready_seconds > 0
        assert d.client.call("GET", "v1/daemon")["state"] == "RUNNING"
        assert (d.mountpoint / "lib.rs").stat().st_size == 16931
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        assert not is_mounted(d.mountpoint)  # the dead FUSE mount was cleared
    finally:
        d.stop()


def test_exit_before_running_is_a_start_error(command, tmp_path, require_root):
    bad = tmp_path / "not-a-bootstrap"
    bad.write_bytes(b"\0" * 8192)
    cmd = NydusdCommand(
        command.mountpoint, bad, command.apisock, config=command.config, binary=NYDUSD
    )
    with pytest.raises(StartError, match=r"nydusd exited with code 1 before mounting .*ERROR") as e:
        start_nydusd(cmd, tmp_path / "out.log")
    assert "ERROR" in e.value.output
    assert not is_mounted(command.mountpoint)


def test_missing_binary(command, tmp_path):
    cmd = NydusdCommand(
        command.mountpoint, command.bootstrap, command.apisock, binary=str(tmp_path / "nope")
    )
    with pytest.raises(StartError, match="cannot start nydusd"):
        start_nydusd(cmd, tmp_path / "out.log")
