"""Smoke test of the benchmark entry point: `benchmarks/run.py --quick --only build` end to end.

Timings are never asserted (design.md section 5); the test checks that every expected row is
present, succeeded and carries positive measurements.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXPECTED = [
    "nydus-image none",
    "nydus-image lz4_block",
    "nydus-image zstd",
    "mkfs.erofs chunked",
    "tar | zstd -3 -T0",
]


@pytest.mark.tools("mkfs.erofs", "zstd", "tar", "bash")
def test_benchmark_quick_build(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            "build",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    rows = {row["name"]: row for row in doc["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    for name in EXPECTED:
        row = rows[name]
        assert row["case"] == "build" and row["status"] == "ok", row
        for key in ("seconds", "mb_per_s", "peak_rss_mib", "output_bytes", "input_bytes"):
            assert row[key] > 0, (name, key, row)
        assert row["input_bytes"] >= 3_000_000
    assert len({row["input_bytes"] for row in rows.values()}) == 1, (
        "all tools must see the same tree"
    )
    # compression really happened: zstd output smaller than the uncompressed one
    assert rows["nydus-image zstd"]["output_bytes"] < rows["nydus-image none"]["output_bytes"]
    # the table went to stdout
    for name in EXPECTED:
        assert name in r.stdout
    # unknown case names are refused
    bad = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown case" in bad.stderr
