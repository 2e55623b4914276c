"""nydusify benchmark cases for `benchmarks/run.py` (registered there with `register`).

* ``nydusify-convert``: wall time and peak RSS of ``nydusify convert`` from a local registry
  (Debian's docker-registry on loopback) to the same registry, for a small image (4 layers with
  whiteouts, hard links, xattrs; ~0.7 MB) and a large one (>= 100 MB of incompressible data in
  4 big and 1,500 small files; 8 MB with ``--quick``). Each run starts with an empty work dir
  and pushes to a new repository, so every layer is pulled, built and pushed again.
* ``nydusify-lazy``: nydusd mounts the converted large image over the registry backend (no
  blob cache) and reads one small file cold: bytes and range requests the registry served for
  that read (``GET /api/v1/metrics/backend``: ``read_amount_total``, ``read_count``), beside the
  image's size; then reads every file once (MB/s through the registry backend).

Timings are wall-clock and reported, never asserted.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nydus.daemon.process import NydusdCommand, start_nydusd
from tests.converter.images import Layout, large_layers, make_image, push, rich_layers
from tests.helpers.proc import run_measured
from tests.registry_fixture import start_registry

MB = 1_000_000
MIB = 1 << 20
BIN = Path(sys.executable).parent
NYDUSIFY, NYDUSD = str(BIN / "nydusify"), str(BIN / "nydusd")

_state: dict[str, Any] = {}


def _registry(ctx: Any) -> Any:
    """One registry for both cases of a run, stopped (and its storage removed) at exit."""
    if "registry" not in _state:
        root = ctx.workdir / "convert-registry"
        shutil.rmtree(root, ignore_errors=True)
        reg = start_registry(root)
        _state["registry"] = reg

        def cleanup() -> None:
            reg.stop()
            shutil.rmtree(root, ignore_errors=True)

        atexit.register(cleanup)
    return _state["registry"]


def _images(ctx: Any) -> dict[str, dict[str, Any]]:
    """Push the small and the large image once per run; return name -> facts."""
    if "images" in _state:
        return _state["images"]
    reg = _registry(ctx)
    base = ctx.workdir / "convert-images"
    shutil.rmtree(base, ignore_errors=True)
    layout = Layout(base / "layout")
    small = make_image(rich_layers())
    layout.add_image("small", small)
    if ctx.quick:
        layers, smalls = large_layers(total_big=2, big_size=3 * MIB, small=200)
    else:
        layers, smalls = large_layers()
    ctx.log("convert: generating the large image ...")
    large = make_image(layers, level=1)
    layout.add_image("large", large)
    out = {}
    for name, image, probe in (("small", small, "etc/motd"), ("large", large, smalls[0])):
        push(layout, name, f"{reg.host}/src:{name}")
        out[name] = {
            "source": f"{reg.host}/src:{name}",
            "bytes": image.compressed_size,
            "layers": len(image.layers),
            "probe": probe,
        }
    shutil.rmtree(base / "layout", ignore_errors=True)
    _state["images"] = out
    return out


def case_convert(ctx: Any, row_cls: type) -> list[Any]:
    reg = _registry(ctx)
    images = _images(ctx)
    rows = []
    for name, facts in images.items():
        runs = []
        out_bytes = 0
        for i in range(ctx.repeat):
            work = ctx.workdir / "convert-work" / f"{name}-{i}"
            shutil.rmtree(work.parent / f"{name}-{i}", ignore_errors=True)
            work.mkdir(parents=True)
            target = f"{reg.host}/bench-{name}-{i}-{time.monotonic_ns()}:nydus"
            ctx.log(
                f"convert: nydusify convert {name} image ({facts['bytes'] / MB:.1f} MB), "
                f"run {i + 1}/{ctx.repeat}"
            )
            m = run_measured(
                [
                    NYDUSIFY,
                    "convert",
                    "--source",
                    facts["source"],
                    "--target",
                    target,
                    "--source-insecure",
                    "--target-insecure",
                    "--work-dir",
                    str(work / "tmp"),
                ],
                cwd=work,
                timeout=3600,
            )
            runs.append(m)
            if m.returncode != 0:
                break
            dst = work / "tmp" / target.split("/", 1)[0] / target.split("/", 1)[1]
            out_bytes = sum(p.stat().st_size for p in (dst / "blobs").iterdir())
            out_bytes += (dst / "bootstrap").stat().st_size
            if name == "large" and "large" not in _state:
                _state["large"] = {
                    "target": target,
                    "bootstrap": dst / "bootstrap",
                    "repo": target.split("/", 1)[1].split(":")[0],
                    "blob_bytes": out_bytes,
                    **facts,
                }
            elif i + 1 < ctx.repeat:
                shutil.rmtree(work, ignore_errors=True)
        row = _to_row(
            row_cls, "nydusify-convert", f"convert {name} image", runs, facts["bytes"], out_bytes
        )
        row.extra.update({"layers": facts["layers"]})
        rows.append(row)
    return rows


def _to_row(
    row_cls: type, case: str, name: str, runs: list[Any], input_bytes: int, output_bytes: int
) -> Any:
    last = runs[-1]
    if last.returncode != 0:
        tail = (last.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return row_cls(
            case, name, "nydusify", status="failed", detail=f"exit {last.returncode}: {tail}"
        )
    secs = sorted(m.seconds for m in runs)[len(runs) // 2]
    return row_cls(
        case,
        name,
        "nydusify",
        seconds=round(secs, 3),
        input_bytes=input_bytes,
        mb_per_s=round(input_bytes / MB / secs, 2) if secs > 0 else 0.0,
        peak_rss_mib=round(max(m.maxrss_bytes for m in runs) / MIB, 1),
        output_bytes=output_bytes,
        ratio=round(output_bytes / input_bytes, 4) if input_bytes else 0.0,
        extra={"runs_seconds": [round(m.seconds, 3) for m in runs]},
    )


class _Mount:
    """Our nydusd over the registry backend (plain HTTP, no blob cache), or over `backend`
    (a `{"type", "config"}` object) when given; `mount_seconds`: start to RUNNING."""

    def __init__(
        self,
        base: Path,
        host: str,
        repo: str,
        bootstrap: Path,
        backend: dict[str, Any] | None = None,
    ) -> None:
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.mnt, self.sock = base / "mnt", base / "api.sock"
        self.mnt.mkdir()
        cfg = {
            "device": {
                "backend": backend
                or {"type": "registry", "config": {"scheme": "http", "host": host, "repo": repo}}
            },
            "mode": "direct",
            "digest_validate": True,
        }
        (base / "registry.json").write_text(json.dumps(cfg))
        command = NydusdCommand(
            self.mnt,
            bootstrap,
            self.sock,
            config=base / "registry.json",
            log_level="warn",
            binary=NYDUSD,
        )
        self.process = start_nydusd(command, base / "nydusd.log", timeout=60)
        self.mount_seconds = self.process.ready_seconds or 0.0

    def backend(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self.process.client.call("GET", "v1/metrics/backend")
        return metrics

    def stop(self) -> None:
        self.process.stop(timeout=60)


def case_lazy(ctx: Any, row_cls: type) -> list[Any]:
    if "large" not in _state:
        case_convert(ctx, row_cls)  # converts the images (rows dropped: run it for them)
    large = _state.get("large")
    if large is None:
        return [
            row_cls(
                "nydusify-lazy",
                "cold read 1 small file",
                "nydusd",
                status="failed",
                detail="the large image did not convert",
            )
        ]
    reg = _registry(ctx)
    rows = []
    m = _Mount(ctx.workdir / "convert-mount", reg.host, large["repo"], large["bootstrap"])
    try:
        at_mount = m.backend()
        t0 = time.monotonic()
        size = len((m.mnt / large["probe"]).read_bytes())
        secs = time.monotonic() - t0
        after = m.backend()
        fetched = after["read_amount_total"] - at_mount["read_amount_total"]
        requests = after["read_count"] - at_mount["read_count"]
        total = large["blob_bytes"]
        rows.append(
            row_cls(
                "nydusify-lazy",
                "cold read 1 small file",
                "nydusd",
                seconds=round(secs, 4),
                input_bytes=total,
                output_bytes=fetched,
                ratio=round(fetched / total, 6),
                detail=f"{size}-byte file: {fetched} bytes in {requests} range requests",
                extra={
                    "file_bytes": size,
                    "fetched_bytes": fetched,
                    "requests": requests,
                    "mount_fetched_bytes": at_mount["read_amount_total"],
                    "mount_requests": at_mount["read_count"],
                    "image_blob_bytes": total,
                },
            )
        )
        t0 = time.monotonic()
        nbytes = nfiles = 0
        buf = bytearray(MIB)
        for p in sorted(m.mnt.rglob("*")):
            if p.is_file() and not p.is_symlink():
                with open(p, "rb", buffering=0) as f:
                    while n := f.readinto(buf):
                        nbytes += n
                nfiles += 1
        secs = time.monotonic() - t0
        done = m.backend()
        rows.append(
            row_cls(
                "nydusify-lazy",
                "read every file",
                "nydusd",
                seconds=round(secs, 3),
                input_bytes=nbytes,
                mb_per_s=round(nbytes / MB / secs, 2) if secs else 0.0,
                output_bytes=done["read_amount_total"],
                ratio=round(done["read_amount_total"] / total, 4),
                detail=f"{nfiles} files, {done['read_count']} range requests in all",
                extra={"files": nfiles, "requests": done["read_count"]},
            )
        )
    finally:
        m.stop()
    for r in rows:
        ctx.log(
            f"  {r.name}: {r.detail}; {r.output_bytes} of {total} image bytes fetched "
            f"({100 * r.output_bytes / total:.3f}%) in {r.seconds:.3f} s"
        )
    return rows


def register(cases: dict[str, Callable[[Any], list[Any]]], row_cls: type) -> None:
    """Add the nydusify cases to run.py's CASES registry."""
    cases["nydusify-convert"] = lambda ctx: case_convert(ctx, row_cls)
    cases["nydusify-lazy"] = lambda ctx: case_lazy(ctx, row_cls)
