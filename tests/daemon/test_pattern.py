"""`access_pattern`: nydusd records the first read of each file and chunk in order, answers
`/api/v1/metrics/pattern` in upstream's shape and writes a prefetch list (nydusctl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nydus.builder.build import CreateOptions, create
from nydus.format.rafs import open_bootstrap, walk
from nydus.fs.pattern import AccessPattern, format_prefetch_list
from tests.daemon.conftest import localfs_config

CS = 0x10000
NYDUSCTL = str(Path(sys.executable).parent / "nydusctl")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pattern")
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    for name, size in (("a", 4 * CS), ("b", 3000), ("c", CS + 7), ("d/e", 2 * CS)):
        (src / name).write_bytes(os.urandom(size))
    (src / "twin").write_bytes((src / "b").read_bytes())  # shares b's chunk
    blobs = tmp / "blobs"
    blobs.mkdir()
    create(
        CreateOptions(
            source=str(src), bootstrap=str(tmp / "boot"), blob_dir=str(blobs), chunk_size=CS
        )
    )
    return src, tmp / "boot", blobs


def _ino_of(mnt: Path, rel: str) -> int:
    return os.stat(mnt / rel).st_ino


def test_first_reads_are_recorded_in_order(image, nydusd):
    src, boot, blobs = image
    d = nydusd(boot, localfs_config(blobs, access_pattern=True))
    mnt = d.mountpoint
    assert (mnt / "b").read_bytes() == (src / "b").read_bytes()
    fd = os.open(mnt / "a", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 2 * CS + 5) == (src / "a").read_bytes()[2 * CS + 5 : 2 * CS + 15]
    finally:
        os.close(fd)
    os.stat(mnt / "c")  # looked at, never read: not recorded
    assert (mnt / "d" / "e").read_bytes() == (src / "d" / "e").read_bytes()
    assert (mnt / "b").read_bytes()  # a second read of b changes nothing in the order

    r = d.get("/api/v1/metrics/pattern")
    assert r.status_code == 200
    records = r.json()
    assert [x["ino"] for x in records] == [_ino_of(mnt, p) for p in ("b", "a", "d/e")]
    for x in records:
        assert set(x) == {"ino", "nr_read", "first_access_time_secs", "first_access_time_nanos"}
        assert x["nr_read"] >= 1 and 0 <= x["first_access_time_nanos"] < 10**9
    times = [x["first_access_time_secs"] * 10**9 + x["first_access_time_nanos"] for x in records]
    assert times == sorted(times)

    doc = d.get("/api/v1/metrics/pattern/files").json()
    assert doc["version"] == "v1"
    assert [f["path"] for f in doc["files"]] == ["/b", "/a", "/d/e"]
    ranges = {f["path"]: f["ranges"] for f in doc["files"]}
    assert ranges["/b"] == [[0, 3000]]
    assert ranges["/d/e"] == [[0, 2 * CS]]
    # a's read started in its third chunk (the kernel may read ahead, never behind)
    assert ranges["/a"][0][0] == 2 * CS

    chunks = d.get("/api/v1/metrics/pattern/chunks").json()
    sb = open_bootstrap(boot.read_bytes())
    inos = {p.decode(): i for p, i in walk(sb)}
    want_first = [
        (c.blob_index, c.ci_index) for c in sb.chunks(inos["/b"])[:1] + sb.chunks(inos["/a"])[2:3]
    ]
    got = [(c["blob_index"], c["chunk_index"]) for c in chunks]
    assert got[:2] == want_first
    assert got[-2:] == [(c.blob_index, c.ci_index) for c in sb.chunks(inos["/d/e"])]
    assert len(got) == len(set(got))

    # nydusctl writes the list file: one absolute path per line, first access first
    out = d.mountpoint.parent / "prefetch.list"
    r = subprocess.run(
        [NYDUSCTL, "-S", str(d.apisock), "metrics", "pattern", "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "/b\n/a\n/d/e\n"
    out_json = d.mountpoint.parent / "prefetch.json"
    r = subprocess.run(
        [NYDUSCTL, "-S", str(d.apisock), "metrics", "--pattern", "-o", str(out_json)]
        + ["--format", "json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(out_json.read_text())["files"][0] == {"path": "/b", "ranges": [[0, 3000]]}


def test_pattern_needs_access_pattern(image, nydusd):
    _src, boot, blobs = image
    d = nydusd(boot, localfs_config(blobs))
    assert (d.mountpoint / "b").read_bytes()
    for path in ("/api/v1/metrics/pattern", "/api/v1/metrics/pattern/files"):
        r = d.get(path)
        assert r.status_code == 400 and "access_pattern" in r.text
    r = subprocess.run(
        [NYDUSCTL, "-S", str(d.apisock), "metrics", "pattern", "-o", "/nonexistent/x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "access_pattern is not enabled" in r.stderr


def test_blob_view_reads_map_to_files(image):
    """The erofs driver's view: reads of a blob's uncompressed range, mapped back to files."""
    _src, boot, _blobs = image
    sb = open_bootstrap(boot.read_bytes())
    inos = {p.decode(): i for p, i in walk(sb)}
    p = AccessPattern(sb)
    e = sb.chunks(inos["/d/e"])
    a = sb.chunks(inos["/a"])
    twin = sb.chunks(inos["/twin"])[0]  # shares b's chunk; b comes first in the bootstrap
    p.record_blob_read(e[1].blob_index, e[1].uncompressed_offset + 100, 4096)
    p.record_blob_read(twin.blob_index, twin.uncompressed_offset, 512)
    # one read across two chunks of a
    p.record_blob_read(a[0].blob_index, a[0].uncompressed_offset + CS - 10, 20)
    p.record_blob_read(0, 1 << 40, 4096)  # past every chunk: ignored
    assert [r["ino"] for r in p.snapshot()] == [inos["/d/e"], inos["/b"], inos["/a"]]
    assert [(r["ino"], r["nr_read"]) for r in p.snapshot()][2] == (inos["/a"], 1)
    doc = p.prefetch_files()
    assert doc["files"] == [
        {"path": "/d/e", "ranges": [[CS, CS]]},
        {"path": "/b", "ranges": [[0, 3000]]},
        {"path": "/a", "ranges": [[0, 2 * CS]]},
    ]
    assert p.chunks() == [
        (e[1].blob_index, e[1].ci_index),
        (twin.blob_index, twin.ci_index),
        (a[0].blob_index, a[0].ci_index),
        (a[1].blob_index, a[1].ci_index),
    ]
    assert format_prefetch_list(doc) == "/d/e\n/b\n/a\n"
