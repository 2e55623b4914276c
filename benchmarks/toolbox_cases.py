"""Benchmark cases for the toolbox commands (registered in `benchmarks/run.py`):

* ``convert-skopeo``: ``nydusify convert`` of the Debian + python image (``quick`` with
  ``--quick``) from a local registry into it, beside ``skopeo copy`` of the same image to a
  fresh second registry in the same run: wall time, peak RSS and the ratio of the two. With
  ``NYDUSIFY_UPSTREAM`` (and ``NYDUS_IMAGE_UPSTREAM``) naming upstream's binaries, upstream's
  convert is measured the same way.
* ``unpack-export``: ``nydus-image unpack`` (tar) and ``export --block`` (with and without
  ``--verity``) of the converted image from its local blobs: MB/s of file data.
* ``chunk-dict``: three versions of an image (the Debian + python tree, then it plus two
  different sets of the pip packages; generated trees with ``--quick``): the dictionary of
  versions 1 and 2 and what it saves on version 3's blob and on the three images together.

Timings are wall-clock, indicative on a shared machine, and never asserted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.proc import Measured, run_measured
from tests.registry_fixture import start_registry

MB = 1_000_000
MIB = 1 << 20
BIN = Path(sys.executable).parent
NYDUSIFY, NYDUS_IMAGE = str(BIN / "nydusify"), str(BIN / "nydus-image")
SHARED_CACHE = Path("/var/tmp/nydus-bench")  # the big image, reused read-only when present

_state: dict[str, Any] = {}


def _image(ctx: Any) -> Any:
    from benchmarks.images import _load, prepare

    name = "quick" if ctx.quick else "debian"
    cached = _load(SHARED_CACHE / "images" / name) if not ctx.quick else None
    return cached or prepare(name, ctx.workdir, ctx.log)


def _median(runs: list[Measured]) -> float:
    return sorted(m.seconds for m in runs)[len(runs) // 2]


def _skopeo(src: str, dst: str) -> list[str]:
    return [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        src,
        dst,
    ]


def case_convert(ctx: Any, Row: type) -> list[Any]:
    img = _image(ctx)
    base = ctx.workdir / "toolbox-convert"
    shutil.rmtree(base, ignore_errors=True)
    reg = start_registry(base / "registry")
    rows: list[Any] = []
    try:
        src = f"{reg.host}/src:latest"
        done = subprocess.run(
            _skopeo(f"oci:{img.layout}:latest", f"docker://{src}"), capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"skopeo push failed: {done.stderr.strip()}")
        tools: dict[str, list[str]] = {"nydusify": [NYDUSIFY]}
        upstream = os.environ.get("NYDUSIFY_UPSTREAM")
        if upstream:
            tools["upstream nydusify"] = [upstream]
        runs: dict[str, list[Measured]] = {"skopeo": [], **{k: [] for k in tools}}
        for i in range(ctx.repeat):  # interleaved, so load drifts hit all tools alike
            other = start_registry(base / f"registry-{i}")
            try:
                ctx.log(f"convert-skopeo: skopeo copy run {i + 1}/{ctx.repeat}")
                runs["skopeo"].append(
                    run_measured(_skopeo(f"docker://{src}", f"docker://{other.host}/copy:latest"))
                )
            finally:
                other.stop()
                shutil.rmtree(base / f"registry-{i}", ignore_errors=True)
            for name, cmd in tools.items():
                work = base / f"work-{i}-{name.split()[0]}"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                extra = []
                if name != "nydusify":
                    extra = ["--nydus-image", os.environ.get("NYDUS_IMAGE_UPSTREAM", "nydus-image")]
                ctx.log(f"convert-skopeo: {name} convert run {i + 1}/{ctx.repeat}")
                m = run_measured(
                    [
                        *cmd,
                        "convert",
                        "--source",
                        src,
                        "--target",
                        f"{reg.host}/t{i}-{name.split()[0]}:nydus",
                        "--source-insecure",
                        "--target-insecure",
                        "--work-dir",
                        str(work / "tmp"),
                        *extra,
                    ],
                    cwd=work,
                    timeout=3600,
                )
                runs[name].append(m)
                if m.returncode == 0 and name == "nydusify":
                    _state["converted"] = work / "tmp" / reg.host / f"t{i}-nydusify:nydus"
        sk = _median(runs["skopeo"])
        for name, ms in runs.items():
            bad = [m for m in ms if m.returncode != 0]
            if bad:
                tail = (bad[0].stderr.strip().splitlines() or ["?"])[-1]
                rows.append(
                    Row(
                        "convert",
                        f"{name} {img.name}",
                        name,
                        status="failed",
                        detail=f"exit {bad[0].returncode}: {tail}",
                    )
                )
                continue
            secs = _median(ms)
            rows.append(
                Row(
                    "convert",
                    f"{name} {img.name}",
                    name,
                    seconds=round(secs, 3),
                    input_bytes=img.compressed,
                    mb_per_s=round(img.compressed / MB / secs, 2),
                    peak_rss_mib=round(max(m.maxrss_bytes for m in ms) / MIB, 1),
                    ratio=round(secs / sk, 2) if sk else 0.0,
                    detail="ratio = time / skopeo copy time" if name != "skopeo" else "",
                    extra={"runs_seconds": [round(m.seconds, 3) for m in ms]},
                )
            )
    finally:
        reg.stop()
    return rows


def _file_bytes(bootstrap: Path) -> int:
    from nydus.format.rafs import open_bootstrap, walk

    sb = open_bootstrap(bootstrap.read_bytes())
    seen: set[int] = set()
    total = 0
    for _p, ino in walk(sb):
        a = sb.attr(ino)
        if a.is_reg and ino not in seen:
            seen.add(ino)
            total += a.size
    return total


def case_unpack_export(ctx: Any, Row: type) -> list[Any]:
    conv = _state.get("converted")
    if conv is None or not (conv / "bootstrap").exists():
        case_convert(ctx, Row)
        conv = _state.get("converted")
    if conv is None:
        return [
            Row(
                "unpack",
                "unpack/export",
                "nydus-image",
                status="failed",
                detail="no converted image",
            )
        ]
    boot, blobs = conv / "bootstrap", conv / "blobs"
    data = _file_bytes(boot)
    out_dir = ctx.workdir / "toolbox-unpack"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmds = {
        "unpack (tar)": (out_dir / "x.tar", ["unpack", str(boot), "-D", str(blobs), "--output"]),
        "export --block": (
            out_dir / "x.disk",
            ["export", "--block", "-B", str(boot), "-D", str(blobs), "-O"],
        ),
        "export --verity": (
            out_dir / "v.disk",
            ["export", "--block", "--verity", "-B", str(boot), "-D", str(blobs), "-O"],
        ),
    }
    rows = []
    for name, (out, args) in cmds.items():
        runs = []
        for i in range(ctx.repeat):
            ctx.log(f"unpack-export: nydus-image {name} run {i + 1}/{ctx.repeat}")
            runs.append(run_measured([NYDUS_IMAGE, *args, str(out)], timeout=3600))
        if runs[-1].returncode != 0:
            rows.append(
                Row(
                    "unpack",
                    name,
                    "nydus-image",
                    status="failed",
                    detail=runs[-1].stderr.strip()[-200:],
                )
            )
            continue
        secs = _median(runs)
        rows.append(
            Row(
                "unpack",
                name,
                "nydus-image",
                seconds=round(secs, 3),
                input_bytes=data,
                mb_per_s=round(data / MB / secs, 1),
                peak_rss_mib=round(max(m.maxrss_bytes for m in runs) / MIB, 1),
                output_bytes=out.stat().st_size,
                ratio=round(out.stat().st_size / data, 3),
                detail="MB/s of file data",
            )
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    return rows


def _versions(ctx: Any, base: Path) -> list[Path]:
    """Three versions: a common tree, plus two different sets of extras in versions 2, 3."""
    out = [base / f"v{i}" for i in (1, 2, 3)]
    for d in out:
        shutil.rmtree(d, ignore_errors=True)
    if ctx.quick:
        r = random.Random(4)
        common = {f"lib/m{i}.bin": r.randbytes(r.randint(1000, 400_000)) for i in range(30)}
        for n, d in enumerate(out):
            for rel, data in common.items():
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                (d / rel).write_bytes(data)
            own = random.Random(n)
            for i in range(10):
                (d / "own").mkdir(exist_ok=True)
                (d / "own" / f"o{i}").write_bytes(own.randbytes(100_000))
        return out
    deb = SHARED_CACHE / "images" / "debian"
    py, app = deb / "python", deb / "app"
    if not py.is_dir() or not app.is_dir():
        from benchmarks.images import prepare

        prepare("debian", ctx.workdir, ctx.log)
        deb = ctx.workdir / "images" / "debian"
        py, app = deb / "python", deb / "app"
    packages = sorted(p.name for p in app.iterdir())
    extras = [[], packages[: len(packages) // 2], packages[len(packages) // 2 :]]
    for d, names in zip(out, extras):
        subprocess.run(["cp", "-a", "--reflink=auto", str(py), str(d)], check=True)
        (d / "app").mkdir(exist_ok=True)
        for pkg in names:
            subprocess.run(["cp", "-a", str(app / pkg), str(d / "app" / pkg)], check=True)
    return out


def case_chunk_dict(ctx: Any, Row: type) -> list[Any]:
    base = ctx.workdir / "toolbox-chunkdict"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ctx.log("chunk-dict: preparing three versions ...")
    vs = _versions(ctx, base)
    blobs = base / "blobs"
    blobs.mkdir()

    def create(src: Path, name: str, *extra: str) -> dict[str, Any]:
        boot = base / f"{name}.boot"
        report = base / f"{name}.json"
        m = run_measured(
            [
                NYDUS_IMAGE,
                "create",
                str(src),
                "-B",
                str(boot),
                "-D",
                str(blobs),
                "-J",
                str(report),
                "-l",
                "warn",
                *extra,
            ],
            timeout=3600,
        )
        if m.returncode != 0:
            raise RuntimeError(f"create {name}: {m.stderr.strip()[-300:]}")
        doc = json.loads(report.read_text())
        return {"boot": boot, "blobs": doc["blobs"], "seconds": m.seconds}

    plain = [create(v, f"v{i + 1}") for i, v in enumerate(vs)]
    dict_boot = base / "dict.boot"
    g = run_measured(
        [
            NYDUS_IMAGE,
            "chunkdict",
            "generate",
            "-B",
            str(dict_boot),
            "-l",
            "warn",
            str(plain[0]["boot"]),
            str(plain[1]["boot"]),
        ]
    )
    if g.returncode != 0:
        return [
            Row(
                "chunkdict",
                "generate",
                "nydus-image",
                status="failed",
                detail=g.stderr.strip()[-200:],
            )
        ]
    with_dict = create(vs[2], "v3-dict", "--chunk-dict", f"bootstrap={dict_boot}")

    def size(blob_id: str) -> int:
        return (blobs / blob_id).stat().st_size

    own3 = size(plain[2]["blobs"][-1])
    own3d = size(with_dict["blobs"][-1])
    total = sum(size(p["blobs"][-1]) for p in plain)
    total_d = size(plain[0]["blobs"][-1]) + size(plain[1]["blobs"][-1]) + own3d
    saved = own3 - own3d
    shutil.rmtree(base, ignore_errors=True)
    return [
        Row(
            "chunkdict",
            "v3 blob without dict",
            "nydus-image",
            output_bytes=own3,
            seconds=round(plain[2]["seconds"], 3),
        ),
        Row(
            "chunkdict",
            "v3 blob with dict",
            "nydus-image",
            output_bytes=own3d,
            seconds=round(with_dict["seconds"], 3),
            ratio=round(own3d / own3, 3),
            detail=f"saves {saved / MB:.1f} MB ({100 * saved / own3:.1f}%) of v3's blob",
        ),
        Row(
            "chunkdict",
            "3 versions, blobs",
            "nydus-image",
            output_bytes=total_d,
            ratio=round(total_d / total, 3),
            detail=f"with the dictionary of v1+v2: {total_d / MB:.1f} MB vs {total / MB:.1f} MB "
            f"({100 * (total - total_d) / total:.1f}% smaller)",
        ),
    ]


def register(cases: dict[str, Callable[[Any], list[Any]]], row_cls: type) -> None:
    cases["convert-skopeo"] = lambda ctx: case_convert(ctx, row_cls)
    cases["unpack-export"] = lambda ctx: case_unpack_export(ctx, row_cls)
    cases["chunk-dict"] = lambda ctx: case_chunk_dict(ctx, row_cls)
