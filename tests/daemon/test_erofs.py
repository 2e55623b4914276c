"""`nydusd --fs-driver erofs`: the kernel's EROFS mounts the bootstrap at the mountpoint;
the daemon serves each blob's uncompressed view from a private FUSE mount under its work
dir. Trees equal their source (file-backed and over loop devices), corrupt or missing data
is an EIO and nothing else, and nothing is left mounted or attached after a stop."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nydus.kernel import loop
from nydus.kernel.mounts import mounts_at
from tests.daemon.conftest import copy_tree, fill_cache_then_flip, localfs_config, run_nydusd
from tests.golden import V6_BLOB_ID, golden_path
from tests.helpers.layers import overlay_view, write_three_layers
from tests.helpers.snapshot import compare_trees, snapshot_tree
from tests.helpers.trees import make_full_tree

pytestmark = [pytest.mark.root("EROFS, FUSE and loop mounts"), pytest.mark.kernel("erofs", "fuse")]

NYDUS_IMAGE = str(Path(sys.executable).parent / "nydus-image")
CS = 0x10000


def erofs(method: str = "auto", work: Path | None = None) -> list[str]:
    args = ["--fs-driver", "erofs", "--erofs-mount", method]
    return [*args, "--work-dir", str(work)] if work is not None else args


def _build(src: Path, out: Path, *args: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "blobs").mkdir(exist_ok=True)
    boot = out / "bootstrap"
    subprocess.run(
        [
            NYDUS_IMAGE,
            "create",
            str(src),
            "--bootstrap",
            str(boot),
            "--blob-dir",
            str(out / "blobs"),
            "--log-level",
            "warn",
            *args,
        ],
        check=True,
    )
    return boot


def _view_dir(d) -> Path:
    info = d.get("/api/v1/daemon").json()
    return Path(info["blob_dir"])


def _leftovers(d, boot: Path, view: Path) -> list[str]:
    """Mounts and loop devices this daemon could have left behind."""
    left = [
        f"mount {m.fstype} at {m.mountpoint}"
        for p in (d.mountpoint, view)
        for m in mounts_at(str(p))
    ]
    left += [
        f"loop {dev}" for dev in loop.loops_backed_by(str(view)) + loop.loops_backed_by(str(boot))
    ]
    return left


def _wait_no_loops(boot: Path, view: Path, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = loop.loops_backed_by(str(view)) + loop.loops_backed_by(str(boot))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _no_mounts_left(tmp_path):
    """Whatever a failing test leaves mounted under its directory is removed (deepest first)."""
    yield
    from nydus.kernel.mounts import MountError, mounts, unmount

    for m in reversed(mounts()):
        if m.mountpoint.startswith(str(tmp_path) + "/"):
            with contextlib.suppress(MountError):  # gone with the one above it
                unmount(m.mountpoint, lazy=True)


@pytest.fixture(scope="module")
def full_image(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("needs root (device nodes, chown, trusted.* xattrs)")
    base = tmp_path_factory.mktemp("erofs-full")
    info = make_full_tree(base / "tree", chunk_size=CS)
    boot = _build(info.root, base / "img", "--chunk-size", hex(CS), "--compressor", "zstd")
    return boot, base / "img" / "blobs", snapshot_tree(info.root)


@pytest.mark.parametrize("method", ["file", "loop"])
def test_dir_build_equals_the_source(nydusd, tmp_path, full_image, method):
    boot, blobs, src = full_image
    cfg = localfs_config(blobs, validate=True, cache_dir=tmp_path / "cache", enable_xattr=True)
    d = nydusd(boot, cfg, *erofs(method))
    top = mounts_at(str(d.mountpoint))[-1]
    assert top.fstype == "erofs"
    info = d.get("/api/v1/daemon").json()
    assert info["fs_driver"] == "erofs" and info["erofs_mount"] == method
    view = _view_dir(d)
    assert view.parent == tmp_path / "cache"  # the blob cache's work dir
    assert mounts_at(str(view))[-1].fstype == "fuse"
    if method == "file":
        assert top.source == str(boot) and "file-backed" in d.log()
        assert _wait_no_loops(boot, view, 0) == []
    else:
        assert top.source.startswith("/dev/loop") and "over loop devices" in d.log()
        assert len(loop.loops_backed_by(str(view))) == 1
        assert loop.backing_file(top.source) == str(boot)
    assert compare_trees(src, d.mountpoint, hardlink_types=("reg",)) == []
    # what the daemon served: blob reads, accounted like file reads
    m = d.get("/api/v1/metrics").json()
    assert m["fop_hits"][4] > 0 and m["data_read"] > 0 and m["fop_errors"][4] == 0
    assert d.stop(signal.SIGTERM) == 0
    assert _wait_no_loops(boot, view) == []
    assert _leftovers(d, boot, view) == []


def test_tar_build_and_three_layers_with_whiteouts(nydusd, tmp_path):
    tars = write_three_layers(tmp_path / "tars", chunk_size=CS)
    out, parent = tmp_path / "out", None
    boots = []
    for i, tar in enumerate(tars, 1):
        args = ["--type", "tar-rafs", "--chunk-size", hex(CS), "--compressor", "zstd"]
        if parent is not None:
            args += ["--parent-bootstrap", str(parent)]
        boot = _build(tar, out / f"l{i}", *args)
        # one blob dir for every layer's blob
        for b in (out / f"l{i}" / "blobs").iterdir():
            (out / "blobs").mkdir(exist_ok=True)
            os.replace(b, out / "blobs" / b.name)
        boots.append(boot)
        parent = boot
    for level in (1, 3):  # one tar build; the stack of three with its whiteouts
        d = nydusd(
            boots[level - 1],
            localfs_config(out / "blobs", validate=True, enable_xattr=True),
            *erofs("auto", tmp_path / "work"),
            name=f"level{level}",
        )
        with overlay_view(tars[:level], tmp_path / f"ref{level}") as ref:
            diffs = compare_trees(ref, d.mountpoint, hardlink_types=("reg",))
        assert diffs == [], f"level {level}:\n" + "\n".join(diffs)
        if level == 3:
            names = set(snapshot_tree(d.mountpoint, content=False))
            assert b"etc/hosts" not in names and b"opt" not in names
        assert d.stop() == 0


@pytest.mark.golden
def test_golden_upstream_image_equals_the_fuse_driver(nydusd, tmp_path):
    boot = golden_path("upstream", "v6", "bootstrap")
    cfg = localfs_config(golden_path("upstream", "v6", "blobs"), validate=True)
    f = nydusd(boot, cfg, name="fuse")
    e = nydusd(boot, cfg, *erofs("auto", tmp_path / "work"), name="erofs")
    assert mounts_at(str(e.mountpoint))[-1].fstype == "erofs"
    assert len((e.mountpoint / "lib.rs").read_bytes()) == 16931
    assert compare_trees(snapshot_tree(f.mountpoint), snapshot_tree(e.mountpoint)) == []


@pytest.mark.golden
@pytest.mark.parametrize("cache", [False, True], ids=["nocache", "blobcache"])
def test_a_flipped_blob_byte_is_eio_for_that_file_only(nydusd, tmp_path, cache):
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    data = bytearray((blobs / V6_BLOB_ID).read_bytes())
    data[2000] ^= 0x55  # inside lib.rs's zstd chunk
    (blobs / V6_BLOB_ID).write_bytes(bytes(data))
    cfg = localfs_config(blobs, validate=True, cache_dir=tmp_path / "cache" if cache else None)
    d = nydusd(golden_path("upstream", "v6", "bootstrap"), cfg, *erofs("auto", tmp_path / "w"))
    for _ in range(2):  # a failed chunk is never cached: it fails again
        with pytest.raises(OSError) as exc:
            (d.mountpoint / "lib.rs").read_bytes()
        assert exc.value.errno == errno.EIO
        assert len((d.mountpoint / "sync_io.rs").read_bytes()) == 13400
    assert d.alive() and f"blob {V6_BLOB_ID} chunk 0" in d.log()
    assert d.get("/api/v1/metrics").json()["fop_errors"][4] >= 1


@pytest.mark.golden
def test_a_flipped_cache_byte_is_refetched_with_digest_validate(nydusd, tmp_path):
    """The blob views read through the chunk device: a cache filled without validation and
    corrupted afterwards is verified (once per chunk) and the bad chunk fetched again."""
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    boot = golden_path("upstream", "v6", "bootstrap")
    cache = tmp_path / "cache"
    good = fill_cache_then_flip(nydusd, boot, blobs, cache, V6_BLOB_ID, validate=False)
    cfg = localfs_config(blobs, validate=True, cache_dir=cache)
    d2 = nydusd(boot, cfg, *erofs("auto", tmp_path / "w"), name="erofs")
    assert (d2.mountpoint / "lib.rs").read_bytes() == good
    assert "cached data fails its digest; refetching" in d2.log()


def test_sixteen_concurrent_readers_get_the_source_bytes(nydusd, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    files = {f"f{i}": rng.randbytes(rng.randrange(1, 3 << 20)) for i in range(6)}
    files["zeros"] = bytes(2 << 20)
    for name, data in files.items():
        (src / name).write_bytes(data)
    boot = _build(src, tmp_path / "img", "--compressor", "lz4_block")
    d = nydusd(
        boot,
        localfs_config(tmp_path / "img" / "blobs", validate=True),
        "--thread-num",
        "4",
        *erofs("auto", tmp_path / "work"),
    )
    errors: list[str] = []
    start = threading.Barrier(16)

    def reader(seed: int) -> None:
        r = random.Random(seed)
        start.wait()
        try:
            for _ in range(30):
                name = r.choice(sorted(files))
                ref = files[name]
                off = r.randrange(len(ref))
                size = r.randrange(1, 400_000)
                fd = os.open(d.mountpoint / name, os.O_RDONLY)
                try:
                    got = os.pread(fd, size, off)
                finally:
                    os.close(fd)
                if got != ref[off : off + size]:
                    errors.append(f"{name} [{off}, +{size}) differs")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for name, ref in files.items():
        assert (d.mountpoint / name).read_bytes() == ref


@pytest.mark.golden
def test_refusals_name_the_fuse_driver_and_leave_nothing(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    work = tmp_path / "work"
    v5 = golden_path("upstream", "v5", "sha256-nocompress-repeatable")
    r = run_nydusd(
        [
            "-D",
            str(golden_path("upstream", "v5", "blobs")),
            "--mountpoint",
            str(mnt),
            "--bootstrap",
            str(v5),
            *erofs("auto", work),
        ]
    )
    errors = [ln for ln in r.stderr.splitlines() if " - ERROR - " in ln]
    assert r.returncode == 1 and len(errors) == 1, r.stderr
    assert "RAFS v5" in errors[0] and "--fs-driver fuse" in errors[0]
    assert mounts_at(str(mnt)) == [] and "Traceback" not in r.stderr
    assert [p for p in work.glob("*") if mounts_at(str(p))] == []


def test_sigkill_then_restart_gives_one_mount_and_correct_data(nydusd, tmp_path, full_image):
    boot, blobs, src = full_image
    cfg = localfs_config(blobs, validate=True, cache_dir=tmp_path / "cache", enable_xattr=True)
    for i in range(2):
        d = nydusd(boot, cfg, *erofs("loop" if i else "file"), name="same")
        view = _view_dir(d)
        d.stop(signal.SIGKILL)
    # what a killed daemon leaves: its EROFS mount and a dead blob mount
    assert [m.fstype for m in mounts_at(str(d.mountpoint))] == ["erofs"]
    assert [m.fstype for m in mounts_at(str(view))] == ["fuse"]
    d = nydusd(boot, cfg, *erofs("auto"), name="same")
    assert [m.fstype for m in mounts_at(str(d.mountpoint))] == ["erofs"]
    assert [m.fstype for m in mounts_at(str(view))] == ["fuse"]
    assert "removed the EROFS mount" in d.log()
    assert compare_trees(src, d.mountpoint, hardlink_types=("reg",)) == []
    assert d.stop() == 0
    assert _wait_no_loops(boot, view) == []
    assert _leftovers(d, boot, view) == []


class BlackHole:
    """A TCP server on loopback that accepts connections and never answers: a registry
    that stalls every request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def black_hole():
    bh = BlackHole()
    yield bh
    bh.close()


def _stalled_config(host: str) -> dict:
    return {
        "device": {
            "backend": {
                "type": "registry",
                "config": {
                    "host": host,
                    "repo": "stall",
                    "scheme": "http",
                    "timeout": 60,
                    "retry_limit": 3,
                },
            }
        },
        "mode": "direct",
    }


@pytest.mark.golden
@pytest.mark.parametrize("driver", ["fuse", "erofs-file", "erofs-loop"])
def test_sigterm_with_a_stalled_backend_exits_within_two_seconds(
    nydusd, tmp_path, black_hole, driver
):
    boot = golden_path("upstream", "v6", "bootstrap")
    extra = [] if driver == "fuse" else erofs(driver.split("-")[1], tmp_path / "work")
    d = nydusd(boot, _stalled_config(black_hole.host), *extra)
    view = _view_dir(d) if driver != "fuse" else tmp_path / "none"
    reader = subprocess.Popen(
        [sys.executable, "-c", f"open({str(d.mountpoint / 'lib.rs')!r}, 'rb').read()"],
        stderr=subprocess.PIPE,
    )
    try:
        assert black_hole.accepted.wait(20)  # the daemon is waiting on the registry
        time.sleep(0.2)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(10)
        took = time.monotonic() - t0
        assert d.proc.returncode == 0, d.log()
        assert took <= 2.0, f"exit took {took:.2f} s:\n{d.log()}"
        reader.wait(10)
        assert reader.returncode != 0  # its read failed, it did not hang
        assert _wait_no_loops(boot, view) == []
        assert _leftovers(d, boot, view) == []
    finally:
        reader.kill()
        reader.wait()


def test_sigterm_with_readers_active(nydusd, tmp_path, full_image):
    boot, blobs, _src = full_image
    d = nydusd(boot, localfs_config(blobs, validate=True), *erofs("loop", tmp_path / "work"))
    view = _view_dir(d)
    script = (
        "import os, sys\n"
        "root = sys.argv[1]\n"
        "while True:\n"
        "    for dp, dn, fn in os.walk(root):\n"
        "        for f in fn:\n"
        "            p = os.path.join(dp, f)\n"
        "            if os.path.isfile(p) and not os.path.islink(p):\n"
        "                with open(p, 'rb') as fh: fh.read()\n"
    )
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(d.mountpoint)], stderr=subprocess.DEVNULL
        )
        for _ in range(4)
    ]
    try:
        time.sleep(1.0)
        assert all(r.poll() is None for r in readers)
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - t0 <= 2.0
        assert mounts_at(str(d.mountpoint)) == [] and mounts_at(str(view)) == []
    finally:
        for r in readers:
            r.kill()
            r.wait()
    assert _wait_no_loops(boot, view) == []  # autoclear once the last reader is gone


@pytest.mark.golden
def test_fuse_driver_sigkill_three_times_then_one_mount(nydusd):
    boot = golden_path("upstream", "v6", "bootstrap")
    cfg = localfs_config(golden_path("upstream", "v6", "blobs"))
    for _ in range(3):
        d = nydusd(boot, cfg, name="same")
        d.stop(signal.SIGKILL)
    assert len(mounts_at(str(d.mountpoint))) == 1  # dead, and never stacked on
    d = nydusd(boot, cfg, name="same")
    (top,) = mounts_at(str(d.mountpoint))
    assert top.fstype == "fuse" and "removed a dead fuse mount" in d.log()
    assert len((d.mountpoint / "lib.rs").read_bytes()) == 16931


def test_access_pattern_maps_blob_reads_back_to_files(nydusd, tmp_path):
    """With erofs the daemon sees blob ranges, not files: the pattern still names the files."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "first").write_bytes(os.urandom(3000))
    (src / "d" / "later").write_bytes(os.urandom(5 * CS))
    boot = _build(src, tmp_path / "img", "--chunk-size", hex(CS))
    cfg = localfs_config(tmp_path / "img" / "blobs", access_pattern=True)
    d = nydusd(boot, cfg, *erofs("auto", tmp_path / "work"))
    assert (d.mountpoint / "first").read_bytes() == (src / "first").read_bytes()
    assert (d.mountpoint / "d/later").read_bytes() == (src / "d" / "later").read_bytes()
    files = [f["path"] for f in d.get("/api/v1/metrics/pattern/files").json()["files"]]
    assert files[0] == "/first" and "/d/later" in files
