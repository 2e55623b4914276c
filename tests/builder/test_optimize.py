"""`nydus-image optimize`: the listed files' chunks move, in list order and deduplicated, into
one new blob; the new bootstrap points at it, lists the files in its prefetch table and mounts
equal to the source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nydus.format.constants import BlobFeatures
from nydus.format.rafs import open_bootstrap
from tests.builder.conftest import run_nydus_image

CS = 0x10000
NYDUSD = str(Path(sys.executable).parent / "nydusd")


def _source(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "lib").mkdir(parents=True)
    rnd = os.urandom
    for i in range(5):
        (src / "lib" / f"m{i}.so").write_bytes(rnd(2 * CS + 1000 * (i + 1)))  # 3 chunks each
    (src / "lib" / "copy.so").write_bytes((src / "lib" / "m1.so").read_bytes())  # same chunks
    (src / "etc").mkdir()
    (src / "etc" / "conf").write_text("key = value\n" * 50)
    os.link(src / "lib" / "m2.so", src / "hard")
    (src / "empty").write_bytes(b"")
    os.symlink("lib/m0.so", src / "link")
    return src


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, nydus_image: str) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("opt")
    src = _source(tmp)
    blobs = tmp / "blobs"
    blobs.mkdir()
    args: list[str | os.PathLike[str]] = ["create", src, "-B", tmp / "boot", "-D", blobs]
    args += ["--compressor", "zstd", "--chunk-size", hex(CS), "--features", "blob-toc"]
    r = run_nydus_image(nydus_image, args)
    assert r.returncode == 0, r.stderr
    return src, tmp / "boot", blobs


def _optimize(nydus_image: str, boot: Path, blobs: Path, out: Path, listing: str, *extra: str):
    out.mkdir(parents=True, exist_ok=True)
    (out / "list").write_text(listing)
    args: list[str | os.PathLike[str]] = ["optimize", "-B", boot, "-p", out / "list", "-D", blobs]
    args += ["-O", out / "boot", "--output-blob-dir", out / "blobs", "-J", out / "out.json"]
    return run_nydus_image(nydus_image, [*args, *extra])


def _ino(sb, path: str) -> int:
    ino = sb.root_ino
    for part in path.strip("/").split("/"):
        ino = sb.lookup(ino, part.encode())
        assert ino is not None, path
    return ino


def test_listed_chunks_move_in_list_order(image, tmp_path, nydus_image):
    src, boot, blobs = image
    out = tmp_path / "o"
    (out / "blobs").mkdir(parents=True)
    listing = "/lib/m3.so\n\n/etc/conf\n/missing\nrelative/path\n/lib/copy.so\n/lib/m1.so\n/link\n"
    r = _optimize(nydus_image, boot, blobs, out, listing)
    assert r.returncode == 0, r.stderr
    assert "/missing" in r.stderr  # skipped with a warning
    old = open_bootstrap(boot.read_bytes())
    new = open_bootstrap((out / "boot").read_bytes())
    report = json.loads((out / "out.json").read_text())
    new_id = report["blobs"][-1]
    assert report["blobs"][:-1] == [b.blob_id for b in old.blobs]
    assert [b.blob_id for b in new.blobs] == report["blobs"]
    assert sorted(os.listdir(out / "blobs")) == [new_id]  # nothing else left there
    blob = new.blobs[-1]
    assert blob.features & BlobFeatures.IS_SEPARATED_WITH_PREFETCH_FILES
    assert blob.compressor == old.blobs[0].compressor
    assert blob.compressed_size == (out / "blobs" / new_id).stat().st_size
    # m3 (3 chunks), conf (1), copy == m1 (3 chunks, once): 7 chunks in list order
    bi = len(old.blobs)
    order = []
    for path in ("/lib/m3.so", "/etc/conf", "/lib/copy.so", "/lib/m1.so"):
        refs = new.chunks(_ino(new, path))
        assert {r.blob_index for r in refs} == {bi}, path
        order += [r.ci_index for r in refs]
    assert order == [0, 1, 2, 3, 4, 5, 6, 4, 5, 6]
    assert blob.chunk_count == 7
    # unlisted files keep their chunks
    for path in ("/lib/m0.so", "/lib/m4.so", "/hard"):
        assert {r.blob_index for r in new.chunks(_ino(new, path))} == {0}
    # prefetch table: the listed files found, in list order (the symlink is no data file)
    assert new.prefetch_inos() == [
        _ino(new, p) for p in ("/lib/m3.so", "/etc/conf", "/lib/copy.so", "/lib/m1.so")
    ]
    r = run_nydus_image(nydus_image, ["check", "-B", out / "boot"])
    assert r.returncode == 0, r.stderr


def test_optimized_image_mounts_equal_to_the_source(image, tmp_path, nydus_image):
    from tests.daemon.conftest import force_unmount, is_mounted
    from tests.helpers.snapshot import compare_trees

    src, boot, blobs = image
    out = tmp_path / "o"
    (out / "blobs").mkdir(parents=True)
    r = _optimize(nydus_image, boot, blobs, out, "/lib/m2.so\n/etc/conf\n/lib/copy.so\n")
    assert r.returncode == 0, r.stderr
    both = tmp_path / "both"
    both.mkdir()
    for d in (blobs, out / "blobs"):
        for name in os.listdir(d):
            os.link(d / name, both / name)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "device": {"backend": {"type": "localfs", "config": {"dir": str(both)}}},
                "mode": "direct",
                "digest_validate": True,
            }
        )
    )
    log = open(tmp_path / "nydusd.log", "wb")
    p = subprocess.Popen(
        [NYDUSD, "--config", cfg, "--mountpoint", mnt, "--bootstrap", out / "boot"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            assert p.poll() is None and time.monotonic() < deadline, (
                tmp_path / "nydusd.log"
            ).read_text()
            time.sleep(0.05)
        assert compare_trees(src, mnt) == []
        # hard links still share one inode, and moved with their data
        assert os.stat(mnt / "hard").st_ino == os.stat(mnt / "lib" / "m2.so").st_ino
    finally:
        p.terminate()
        p.wait(20)
        force_unmount(mnt)
        log.close()


def test_json_ranges_move_only_the_touched_chunks(image, tmp_path, nydus_image):
    _src, boot, blobs = image
    out = tmp_path / "o"
    (out / "blobs").mkdir(parents=True)
    doc = {
        "version": "v1",
        "files": [
            {"path": "/lib/m4.so", "ranges": [[CS + 10, 5]]},  # the middle chunk only
            {"path": "/lib/m0.so"},  # no ranges: the whole file
        ],
    }
    r = _optimize(nydus_image, boot, blobs, out, json.dumps(doc))
    assert r.returncode == 0, r.stderr
    new = open_bootstrap((out / "boot").read_bytes())
    bi = len(new.blobs) - 1
    m4 = new.chunks(_ino(new, "/lib/m4.so"))
    assert [r.blob_index for r in m4] == [0, bi, 0]
    assert m4[1].ci_index == 0
    assert [(r.blob_index, r.ci_index) for r in new.chunks(_ino(new, "/lib/m0.so"))] == [
        (bi, 1),
        (bi, 2),
        (bi, 3),
    ]


def test_a_corrupt_source_blob_is_refused_and_nothing_is_written(image, tmp_path, nydus_image):
    _src, boot, blobs = image
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(blobs):
        data = bytearray((blobs / name).read_bytes())
        data[100] ^= 0xFF  # inside the first chunk's compressed bytes
        (bad / name).write_bytes(bytes(data))
    out = tmp_path / "o"
    (out / "blobs").mkdir(parents=True)
    sb = open_bootstrap(boot.read_bytes())
    first = min(
        (c for c in sb.chunk_table() if c.blob_index == 0), key=lambda c: c.compressed_offset
    )
    files = [f"/lib/m{i}.so" for i in range(5)]
    owner = next(
        p
        for p in files
        if any(r.compressed_offset == first.compressed_offset for r in sb.chunks(_ino(sb, p)))
    )
    r = _optimize(nydus_image, boot, bad, out, f"{owner}\n")
    assert r.returncode != 0
    assert "digest" in r.stderr.splitlines()[-1]
    assert not (out / "boot").exists()
    assert os.listdir(out / "blobs") == []


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ("/missing\n/etc\n", "none of the 2 listed paths"),
        ('{"version": "v2", "files": []}', "unsupported prefetch file version"),
        ('{"version": "v1", "files": [{"path": "/a", "ranges": [[1]]}]}', "ranges must be"),
        ("relative\n", "lists no absolute path"),
    ],
)
def test_bad_lists_fail_with_one_line(image, tmp_path, nydus_image, listing, message):
    _src, boot, blobs = image
    out = tmp_path / "o"
    (out / "blobs").mkdir(parents=True)
    r = _optimize(nydus_image, boot, blobs, out, listing)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in r.stderr
    assert not (out / "boot").exists() and os.listdir(out / "blobs") == []


def test_missing_inputs_fail(image, tmp_path, nydus_image):
    _src, boot, blobs = image
    out = tmp_path / "o"
    (out / "blobs").mkdir(parents=True)
    (out / "list").write_text("/etc/conf\n")
    r = run_nydus_image(
        nydus_image,
        ["optimize", "-B", boot, "-p", out / "list", "--output-blob-dir", out / "blobs"],
    )
    assert r.returncode != 0 and "--blob-dir" in r.stderr
    r = run_nydus_image(
        nydus_image,
        ["optimize", "-B", boot, "-p", out / "nolist", "-D", blobs, "--output-blob-dir", out],
    )
    assert r.returncode != 0 and "cannot read prefetch files" in r.stderr
