"""`containerd-nydus-grpc` command line and TOML config: values used, bad input refused with
one ERROR line and exit 1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.snapshotter.client import SNAPSHOTTER_BIN, SnapshotterProcess


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SNAPSHOTTER_BIN, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("toml", "flags", "words"),
    [
        ("version = 1\ndaemon_mode = 'wild'\n", [], "daemon mode 'wild' is not supported"),
        ("version = 1\n[daemon]\nfs_driver = 'fscache'\n", [], "fs driver 'fscache'"),
        ("version = 1\n[daemon]\nthreads_number = 'four'\n", [], "threads_number must be int"),
        ("version = 1\n[daemon]\nrecover_policy = 'failover'\n", [], "recover_policy"),
        ("version = 2\n", [], "version 2 is not supported"),
        ("root = [\n", [], "is not valid TOML"),
        ("version = 1\n", ["--daemon-mode", "none"], "invalid choice: 'none'"),
        ("version = 1\nroot = 'relative'\n", [], "must be an absolute path"),
    ],
)
def test_bad_config(tmp_path: Path, toml: str, flags: list[str], words: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    done = _run("--config", str(cfg), "--address", str(tmp_path / "s.sock"), *flags)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and " - ERROR - " in lines[0], done.stderr
    assert words in lines[0]
    assert not (tmp_path / "s.sock").exists()


def test_toml_values_and_flag_override(tmp_path: Path) -> None:
    root = tmp_path / "from-toml"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"version = 1\nroot = '{root}'\naddress = '{tmp_path}/toml.sock'\n"
        "daemon_mode = 'multiple'\n[daemon]\nrecover_policy = 'none'\n"
        "[metrics]\naddress = ':9110'\n[remote.auth]\nenable_cri_keychain = false\n"
    )
    sp = SnapshotterProcess(root, tmp_path / "flag.sock", tmp_path / "log", [])
    sp.args = ["--config", str(cfg)]
    client = sp.start()  # --root/--address given by the process helper: flags win
    try:
        client.prepare("k")
        assert (root / "snapshots" / "1" / "fs").is_dir()
        assert "daemon mode dedicated" in sp.log()
        assert not (tmp_path / "toml.sock").exists()
    finally:
        assert sp.stop() == 0
