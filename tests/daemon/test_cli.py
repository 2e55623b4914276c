"""nydusd's command line: log lines, refused inputs (one ERROR line, exit 1, nothing mounted),
shutdown by signal, recovery after SIGKILL."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from tests.daemon.conftest import NYDUSD, copy_tree, findmnt, is_mounted, localfs_config, run_nydusd
from tests.golden import golden_path

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def test_log_lines_like_upstream(nydusd):
    d = nydusd(
        golden_path("upstream", "v6", "bootstrap"),
        localfs_config(golden_path("upstream", "v6", "blobs"), validate=True),
    )
    lines = d.log().splitlines()
    assert all(re.match(rf"^{STAMP} - (INFO|WARN|ERROR|DEBUG) - ", ln) for ln in lines), lines
    msgs = [ln.split(" - ", 2)[2] for ln in lines]
    assert (
        msgs[0] == "rafs superblock features: COMPRESSION_ZSTD HASH_BLAKE3 EXPLICIT_UID_GID "
        "INLINED_CHUNK_DIGEST"
    )
    assert msgs[1].startswith("backend config: localfs")
    for expected in (
        "rafs imported",
        "rafs mounted: mode=direct digest_validate=true iostats_files=false",
        "vfs mounted",
        "starting fuse daemon",
    ):
        assert expected in msgs
    mount_line = [m for m in msgs if m.startswith("mount source nydusfs dest")]
    assert mount_line and mount_line[0].startswith(
        f"mount source nydusfs dest {d.mountpoint} with fstype fuse opts default_permissions,"
    )
    order = [msgs.index(m) for m in ("rafs imported", "vfs mounted", "starting fuse daemon")]
    assert order == sorted(order)
    assert findmnt(d.mountpoint).split()[1:3] == ["nydusfs", "fuse"]


def test_localfs_dir_flag_and_fuse_subcommand(nydusd, tmp_path):
    """`nydusd fuse -D DIR`: blobs and the blob cache in one directory."""
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    d = nydusd(golden_path("upstream", "v6", "bootstrap"), None, "-D", str(blobs))
    assert len((d.mountpoint / "lib.rs").read_bytes()) == 16931
    assert d.args[1:2] != ["fuse"]
    names = sorted(os.listdir(blobs))
    assert any(n.endswith(".blob.data") for n in names)
    assert any(n.endswith(".blob.data.chunk_map") for n in names)
    d2 = nydusd(golden_path("upstream", "v6", "bootstrap"), None, "-D", str(blobs), name="sub")
    assert d2.alive()


def test_fuse_subcommand(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(localfs_config(golden_path("upstream", "v6", "blobs"))))
    proc = subprocess.Popen(
        [
            NYDUSD,
            "fuse",
            "--thread-num",
            "2",
            "--config",
            str(cfg),
            "--bootstrap",
            str(golden_path("upstream", "v6", "bootstrap")),
            "--mountpoint",
            str(mnt),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert is_mounted(mnt)
        assert (mnt / "sync_io.rs").stat().st_size == 13400
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "received signal SIGINT" in err
    assert not is_mounted(mnt)


def _bad_cases(tmp_path):
    v6 = str(golden_path("upstream", "v6", "bootstrap"))
    blobs = str(golden_path("upstream", "v6", "blobs"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(localfs_config(blobs)))
    notboot = tmp_path / "notboot"
    notboot.write_bytes(os.urandom(8192))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    nodir = tmp_path / "nodir.json"
    nodir.write_text(json.dumps(localfs_config(tmp_path / "no-such-dir")))
    badjson = tmp_path / "bad.json"
    badjson.write_text('{"device": {"backend": ')
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        json.dumps({"device": {"backend": {"type": "ftp", "config": {}}}, "mode": "direct"})
    )
    emptydir = tmp_path / "emptyblobs"
    emptydir.mkdir()
    noblob = tmp_path / "noblob.json"
    noblob.write_text(json.dumps(localfs_config(emptydir)))
    afile = tmp_path / "afile"
    afile.write_text("x")
    open_dir = tmp_path / "open-dir"  # writable by everyone, not sticky
    open_dir.mkdir()
    open_dir.chmod(0o777)
    base = ["--mountpoint", str(mnt), "--bootstrap", v6]
    return mnt, {
        "missing-bootstrap": (
            [
                "--config",
                str(good),
                "--mountpoint",
                str(mnt),
                "--bootstrap",
                str(tmp_path / "nope"),
            ],
            "does not exist",
        ),
        "not-a-bootstrap": (
            ["--config", str(good), "--mountpoint", str(mnt), "--bootstrap", str(notboot)],
            "not a RAFS bootstrap",
        ),
        "empty-bootstrap": (
            ["--config", str(good), "--mountpoint", str(mnt), "--bootstrap", str(empty)],
            "empty",
        ),
        "missing-blob-dir": (["--config", str(nodir), *base], "no-such-dir"),
        "missing-blob-file": (["--config", str(noblob), *base], "cannot open blob be7d77ee"),
        "missing-blob-dir-D": (["-D", str(tmp_path / "no-such-dir"), *base], "no-such-dir"),
        "mountpoint-is-a-file": (
            ["--config", str(good), "--mountpoint", str(afile), "--bootstrap", v6],
            "not a directory",
        ),
        "mountpoint-missing": (
            ["--config", str(good), "--mountpoint", str(tmp_path / "nomnt"), "--bootstrap", v6],
            "does not exist",
        ),
        "invalid-json": (["--config", str(badjson), *base], "invalid JSON"),
        "config-missing": (["--config", str(tmp_path / "nocfg.json"), *base], "nocfg.json"),
        "unknown-backend": (["--config", str(unknown), *base], "unknown backend type 'ftp'"),
        "thread-num-zero": (["--config", str(good), "--thread-num", "0", *base], "1..1024"),
        "thread-num-text": (["--config", str(good), "--thread-num", "many", *base], "many"),
        "bad-log-level": (["--config", str(good), "--log-level", "loud", *base], "loud"),
        "unknown-flag": (["--config", str(good), "--frobnicate", *base], "--frobnicate"),
        "no-config": (base, "--config"),
        "id-without-supervisor": (["--config", str(good), "--id", "x", *base], "--supervisor"),
        "config-and-D": (["--config", str(good), "-D", blobs, *base], "conflicts"),
        "apisock-in-open-dir": (
            ["--config", str(good), "--apisock", str(open_dir / "api.sock"), *base],
            "writable by every user and not sticky",
        ),
        "apisock-is-a-file": (
            ["--config", str(good), "--apisock", str(afile), *base],
            "exists and is not a socket",
        ),
        "apisock-dir-is-a-file": (
            ["--config", str(good), "--apisock", str(afile / "api.sock"), *base],
            "is a regular file, not a directory",
        ),
        "blob-dir-D-is-a-file": (["-D", str(afile), *base], "is a regular file, not a directory"),
    }


def test_bad_inputs_one_error_line(tmp_path):
    mnt, cases = _bad_cases(tmp_path)
    for name, (args, needle) in cases.items():
        r = run_nydusd(args)
        errors = [ln for ln in r.stderr.splitlines() if " - ERROR - " in ln]
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert len(errors) == 1, (name, r.stderr)
        assert re.match(rf"^{STAMP} - ERROR - ", errors[0]), (name, errors[0])
        assert needle in errors[0], (name, errors[0])
        assert "Traceback" not in r.stderr, (name, r.stderr)
        assert findmnt(mnt) == "", name
        assert not is_mounted(mnt), name
    assert (tmp_path / "afile").read_text() == "x"  # a file at --apisock is never removed


def test_api_socket_is_owner_only_whatever_the_umask(nydusd, tmp_path):
    """Under umask 000 the socket would be 0777 (any local user could PUT .../daemon/exit)."""
    (tmp_path / "u").mkdir(mode=0o755)  # the socket's directory, made before the umask
    old = os.umask(0)
    try:
        d = nydusd(
            golden_path("upstream", "v6", "bootstrap"),
            localfs_config(golden_path("upstream", "v6", "blobs")),
            name="u",
        )
    finally:
        os.umask(old)
    st = os.lstat(d.apisock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_an_unreachable_registry_fails_reads_not_the_mount(nydusd, tmp_path):
    """Blob meta loads on a blob's first use, so the mount needs no request; the first read
    is an EIO naming the registry, and the daemon stays up."""
    cfg = {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"host": "127.0.0.1:1", "repo": "ubuntu", "scheme": "http"},
            }
        },
        "mode": "direct",
    }
    d = nydusd(golden_path("upstream", "v6", "bootstrap"), cfg)
    assert sorted(os.listdir(d.mountpoint)) == ["lib.rs", "sync_io.rs"]
    with pytest.raises(OSError) as exc:
        (d.mountpoint / "lib.rs").read_bytes()
    assert exc.value.errno == errno.EIO
    assert d.alive() and "127.0.0.1:1" in d.log()


def test_sigterm_unmounts(nydusd):
    d = nydusd(
        golden_path("upstream", "v6", "bootstrap"),
        localfs_config(golden_path("upstream", "v6", "blobs")),
    )
    assert (d.mountpoint / "lib.rs").read_bytes()
    assert d.stop(signal.SIGTERM) == 0
    assert not is_mounted(d.mountpoint)
    assert findmnt(d.mountpoint) == ""
    assert not d.apisock.exists()


def test_sigterm_while_a_file_is_open(nydusd):
    d = nydusd(
        golden_path("upstream", "v6", "bootstrap"),
        localfs_config(golden_path("upstream", "v6", "blobs")),
    )
    fd = os.open(d.mountpoint / "lib.rs", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == b"// Copyrig"
        assert d.stop(signal.SIGTERM) == 0
        # the mount is detached even though a file is still open on it
        assert not is_mounted(d.mountpoint)
    finally:
        try:
            os.close(fd)
        except OSError as exc:  # the connection is gone: the kernel reports ENOTCONN
            assert exc.errno == errno.ENOTCONN


def test_sigkill_then_fusermount_clears(nydusd):
    d = nydusd(
        golden_path("upstream", "v6", "bootstrap"),
        localfs_config(golden_path("upstream", "v6", "blobs")),
    )
    d.stop(signal.SIGKILL)
    assert is_mounted(d.mountpoint)  # the kernel keeps a dead FUSE mount ...
    with pytest.raises(OSError):
        os.listdir(d.mountpoint)  # ... that answers ENOTCONN
    r = subprocess.run(["fusermount3", "-u", str(d.mountpoint)], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(d.mountpoint)], check=True)
    assert not is_mounted(d.mountpoint)
    assert os.listdir(d.mountpoint) == []


def test_version_and_help():
    r = run_nydusd(["--version"])
    assert r.returncode == 0 and "nydusd" in r.stdout
    r = run_nydusd(["--help"])
    assert r.returncode == 0 and "--thread-num" in r.stdout
