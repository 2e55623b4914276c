"""`benchmarks/run.py --quick` of the user-facing cases (start, read-all, metadata, image-build)
end to end: a real docker-registry on loopback, skopeo, nydusify, nydusd over FUSE, overlayfs.

Timings are never asserted (design.md section 5); the test checks that every expected row is
present, succeeded and carries positive measurements, and that OCI and Nydus rows both exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.registry_fixture import REGISTRY_BIN

REPO = Path(__file__).resolve().parent.parent
CASES = ["start", "read-all", "metadata", "mount", "image-build"]
EXPECTED = {
    "start": [
        "start OCI loopback",
        "start Nydus loopback",
        "start Nydus erofs loopback",
        "start Nydus optimized loopback",
        "start OCI 100 Mbit/s",
        "start Nydus 100 Mbit/s",
        "start Nydus erofs 100 Mbit/s",
        "start Nydus optimized 100 Mbit/s",
    ],
    "read-all": [
        "read-all OCI pull+unpack",
        "read-all OCI +tar",
        "read-all Nydus",
        "read-all Nydus erofs",
    ],
    "metadata": [
        "metadata OCI cold",
        "metadata Nydus cold",
        "metadata Nydus erofs cold",
        "metadata OCI warm",
        "metadata Nydus warm",
        "metadata Nydus erofs warm",
    ],
    "mount": ["mount fuse loopback", "mount erofs loopback"],
    "image-build": [
        "nydusify convert zstd",
        "nydusify convert lz4_block",
        *[f"create layer {i} {c}" for c in ("zstd", "lz4_block") for i in (1, 2, 3)],
    ],
}


@pytest.mark.root("mount, chroot, drop_caches")
@pytest.mark.kernel("fuse", "overlay")
@pytest.mark.tools(REGISTRY_BIN, "openssl", "skopeo", "tar", "gzip", "find", "bash")
def test_benchmark_quick_user_cases(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            ",".join(CASES),
            "--repeat",
            "1",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert doc["host"]["cpus"] >= 1 and doc["host"]["memory_bytes"] > 0
    rows = {row["name"]: row for row in doc["rows"]}
    want = [name for case in CASES for name in EXPECTED[case]]
    assert sorted(rows) == sorted(want)
    for case in CASES:
        for name in EXPECTED[case]:
            row = rows[name]
            assert row["case"] == case and row["status"] == "ok", row
            assert row["seconds"] > 0, row
            ex = row["extra"]
            assert 0 < ex["min_s"] <= row["seconds"] <= ex["max_s"], row
        tools = {rows[n]["tool"] for n in EXPECTED[case]}
        if case == "start":
            assert tools == {"OCI", "Nydus", "Nydus erofs", "Nydus optimized"}, (case, tools)
        elif case == "mount":
            assert tools == {"Nydus fuse", "Nydus erofs"}, (case, tools)
        elif case != "image-build":
            assert tools == {"OCI", "Nydus", "Nydus erofs"}, (case, tools)
    # bytes and requests fetched from the registry, both ways
    for name in (
        "start OCI loopback",
        "start Nydus loopback",
        "start Nydus 100 Mbit/s",
        "start Nydus erofs loopback",
        "read-all OCI pull+unpack",
        "read-all Nydus",
        "read-all Nydus erofs",
    ):
        ex = rows[name]["extra"]
        assert ex["bytes_fetched"] > 0 and ex["requests"] > 0, (name, ex)
    # the OCI way fetches the whole image: manifest + config + every gzip layer
    oci = rows["start OCI loopback"]["extra"]
    assert oci["bytes_fetched"] > rows["start Nydus loopback"]["extra"]["image_compressed"]
    assert rows["start Nydus loopback"]["extra"]["nydus_over_oci"] > 0
    assert rows["start Nydus loopback"]["extra"]["needed"]["files"] == 33
    # the optimized image: its prefetch table is the workload's files, fetched by prefetch
    opt = rows["start Nydus optimized loopback"]["extra"]
    assert opt["bytes_fetched"] > 0 and opt["prefetch_requests"] > 0, opt
    # read-all through the mount fetches at least every chunk of the image once
    assert (
        rows["read-all Nydus"]["extra"]["bytes_fetched"]
        >= rows["start Nydus loopback"]["extra"]["needed"]["compressed_bytes"]
    )
    assert rows["start Nydus erofs loopback"]["extra"]["erofs_over_fuse"] > 0
    # the mount rows: exec -> mounted, and the daemon's CPU time by then
    for driver in ("fuse", "erofs"):
        assert rows[f"mount {driver} loopback"]["extra"]["cpu_s"] > 0
    # the quick start row says what ran instead of python
    assert "host-side cat" in rows["start OCI loopback"]["detail"]
    # metadata: both ways list the same entries
    assert (
        rows["metadata OCI cold"]["extra"]["entries"]
        == rows["metadata Nydus cold"]["extra"]["entries"]
        == rows["metadata Nydus erofs cold"]["extra"]["entries"]
        > 200
    )
    # image-build: sizes and speeds
    for comp in ("zstd", "lz4_block"):
        conv = rows[f"nydusify convert {comp}"]
        assert conv["output_bytes"] > 0 and conv["extra"]["size_over_oci"] > 0
        for i in (1, 2, 3):
            assert rows[f"create layer {i} {comp}"]["mb_per_s"] > 0
    # the table went to stdout with the machine line
    assert "cores" in r.stdout and "GiB memory" in r.stdout
    for name in want:
        assert name in r.stdout
