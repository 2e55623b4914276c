#!/usr/bin/env python3
"""The project's benchmark entry point: measures what users feel, never asserts timings.

    python benchmarks/run.py [--quick] [--only CASE[,CASE]] [--json OUT] [--workdir DIR] [--repeat N]

Cases live in the ``CASES`` registry (name -> function taking a :class:`Context` and returning
result rows); add later cases (nydusd reads, nydusify convert) as more functions there.

``build``: ``nydus-image create`` of one generated tree (>= 500 MB, >= 20,000 files; cached under
the work dir) with each compressor, beside ``mkfs.erofs`` (uncompressed, chunked, data on
``--blobdev``) and ``tar -cf - | zstd -3 -T0`` on the same tree in the same run.  Reports input
MB/s, wall seconds, peak RSS of the child process and output size.  ``--quick`` uses a tree of a
few MB so CI can run the whole thing end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.proc import Measured, run_measured  # noqa: E402
from tests.helpers.trees import make_large_tree  # noqa: E402

DEFAULT_WORKDIR = Path("/var/tmp/nydus-bench")
MB = 1_000_000
MIB = 1 << 20


@dataclass
class Context:
    quick: bool
    workdir: Path
    repeat: int
    nydus_image: list[str]
    log: Callable[[str], None] = print


@dataclass
class Row:
    case: str
    name: str  # e.g. "nydus-image zstd"
    tool: str
    status: str = "ok"  # ok | failed | skipped
    seconds: float = 0.0  # median wall time over the repeats
    input_bytes: int = 0
    mb_per_s: float = 0.0  # input MB (10^6 bytes) per second
    peak_rss_mib: float = 0.0  # max over the repeats of the child's ru_maxrss
    output_bytes: int = 0
    ratio: float = 0.0  # output / input
    detail: str = ""
    extra: dict = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------------


def find_nydus_image() -> list[str]:
    cand = Path(sys.executable).parent / "nydus-image"
    if cand.exists():
        return [str(cand)]
    found = shutil.which("nydus-image")
    if found:
        return [found]
    return [sys.executable, "-m", "nydus.cli.image"]


def cached_tree(ctx: Context, total_bytes: int, nfiles: int, seed: int = 1) -> tuple[Path, dict]:
    """Generate (once) a make_large_tree() tree under the work dir; reuse it while intact."""
    root = ctx.workdir / f"tree-{total_bytes}-{nfiles}-{seed}"
    marker = ctx.workdir / f"tree-{total_bytes}-{nfiles}-{seed}.json"
    if marker.exists() and root.is_dir():
        stats = json.loads(marker.read_text())
        ctx.log(f"using cached tree {root} ({stats['files']} files, {stats['bytes'] / MB:.0f} MB)")
        return root, stats
    ctx.log(f"generating tree {root}: {total_bytes / MB:.0f} MB in {nfiles} files ...")
    t0 = time.monotonic()
    marker.unlink(missing_ok=True)
    stats = make_large_tree(root, total_bytes=total_bytes, nfiles=nfiles, seed=seed)
    marker.write_text(json.dumps(stats))
    ctx.log(f"  done in {time.monotonic() - t0:.1f} s")
    return root, stats


def warm_page_cache(root: Path) -> None:
    """Read every file once so all tools start from the same (warm) page cache."""
    buf = bytearray(1 << 20)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def measure(
    ctx: Context, cmd: list[str], outputs: list[Path], prepare: Callable[[], None]
) -> tuple[list[Measured], int]:
    """Run ``cmd`` ctx.repeat times (``prepare`` before each run); return runs and output size."""
    runs = []
    for _ in range(ctx.repeat):
        prepare()
        m = run_measured(cmd, timeout=3600)
        runs.append(m)
        if m.returncode != 0:
            break
    size = sum(p.stat().st_size for p in outputs if p.exists())
    return runs, size


def to_row(
    case: str, name: str, tool: str, runs: list[Measured], input_bytes: int, output_bytes: int
) -> Row:
    last = runs[-1]
    if last.returncode != 0:
        tail = (last.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return Row(case, name, tool, status="failed", detail=f"exit {last.returncode}: {tail}")
    secs = statistics.median(m.seconds for m in runs)
    return Row(
        case,
        name,
        tool,
        seconds=round(secs, 3),
        input_bytes=input_bytes,
        mb_per_s=round(input_bytes / MB / secs, 2) if secs > 0 else 0.0,
        peak_rss_mib=round(max(m.maxrss_bytes for m in runs) / MIB, 1),
        output_bytes=output_bytes,
        ratio=round(output_bytes / input_bytes, 4) if input_bytes else 0.0,
        extra={"runs_seconds": [round(m.seconds, 3) for m in runs]},
    )


def _fresh(outdir: Path) -> Callable[[], None]:
    """Before each run: an empty output directory."""

    def prepare() -> None:
        if outdir.exists():
            shutil.rmtree(outdir)
        outdir.mkdir(parents=True)

    return prepare


# -- cases -----------------------------------------------------------------------------------------


def case_build(ctx: Context) -> list[Row]:
    """nydus-image create (none, lz4_block, zstd) vs mkfs.erofs and tar|zstd on one tree."""
    if ctx.quick:
        total, nfiles = 4 * MB, 200
    else:
        total, nfiles = 512 * MIB, 20_000
    tree, stats = cached_tree(ctx, total, nfiles)
    input_bytes = stats["bytes"]
    if not ctx.quick:
        ctx.log("warming the page cache ...")
        warm_page_cache(tree)
    out = ctx.workdir / "out-build"
    rows: list[Row] = []

    for comp in ("none", "lz4_block", "zstd"):
        d = out / f"nydus-{comp}"
        boot, blob = d / "bootstrap", d / "blob"
        cmd = [
            *ctx.nydus_image,
            "create",
            str(tree),
            "--bootstrap",
            str(boot),
            "--blob",
            str(blob),
            "--compressor",
            comp,
            "--log-level",
            "warn",
        ]
        ctx.log(f"build: nydus-image --compressor {comp}")
        runs, size = measure(ctx, cmd, [boot, blob], _fresh(d))
        rows.append(to_row("build", f"nydus-image {comp}", "nydus-image", runs, input_bytes, size))

    d = out / "mkfs-erofs"
    if shutil.which("mkfs.erofs"):
        meta, blob = d / "meta.img", d / "blob.img"
        cmd = [
            "mkfs.erofs",
            "--quiet",
            "--chunksize=1048576",
            f"--blobdev={blob}",
            str(meta),
            str(tree),
        ]
        ctx.log("build: mkfs.erofs (chunked, uncompressed, --blobdev)")
        runs, size = measure(ctx, cmd, [meta, blob], _fresh(d))
        rows.append(to_row("build", "mkfs.erofs chunked", "mkfs.erofs", runs, input_bytes, size))
    else:
        rows.append(
            Row(
                "build",
                "mkfs.erofs chunked",
                "mkfs.erofs",
                status="skipped",
                detail="mkfs.erofs not installed",
            )
        )

    d = out / "tar-zstd"
    if shutil.which("zstd") and shutil.which("tar"):
        target = d / "tree.tar.zst"
        script = f"set -o pipefail; tar -C {_q(tree)} -cf - . | zstd -3 -T0 -q -f -o {_q(target)}"
        ctx.log("build: tar -cf - | zstd -3 -T0")
        runs, size = measure(ctx, ["bash", "-c", script], [target], _fresh(d))
        rows.append(to_row("build", "tar | zstd -3 -T0", "tar+zstd", runs, input_bytes, size))
    else:
        rows.append(
            Row(
                "build",
                "tar | zstd -3 -T0",
                "tar+zstd",
                status="skipped",
                detail="tar or zstd not installed",
            )
        )

    for r in rows:
        r.extra.update({"tree": str(tree), "files": stats["files"]})
    return rows


def _q(p: Path) -> str:
    import shlex

    return shlex.quote(str(p))


CASES: dict[str, Callable[[Context], list[Row]]] = {
    "build": case_build,
    # later: "nydusd-read": case_nydusd_read, "nydusify-convert": case_nydusify_convert, ...
}

from benchmarks.nydusd_cases import register as _register_nydusd_cases  # noqa: E402

_register_nydusd_cases(CASES, Row, cached_tree)

from benchmarks import convert_cases as _convert_cases  # noqa: E402

_convert_cases.register(CASES, Row)  # nydusify-convert, nydusify-lazy

from benchmarks import start_cases as _start_cases  # noqa: E402

_start_cases.register(CASES, Row)  # start, read-all, metadata, image-build (vs the OCI way)

from benchmarks import objstore_cases as _objstore_cases  # noqa: E402

_objstore_cases.register(CASES, Row)  # backend-cold (blobs in S3 vs in the registry)

from benchmarks import ctr_cases as _ctr_cases  # noqa: E402

_ctr_cases.register(CASES, Row)  # ctr-run: containerd + our snapshotter vs containerd's own
USER_CASES = (*_start_cases.CASE_NAMES, _ctr_cases.CASE)

from benchmarks import toolbox_cases as _toolbox_cases  # noqa: E402

_toolbox_cases.register(CASES, Row)  # convert-skopeo, unpack-export, chunk-dict


# -- output ----------------------------------------------------------------------------------------


def host_info() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(rows: list[Row], out=sys.stdout) -> None:
    h = host_info()
    print(
        f"machine  {h['cpus']} cores, {h['memory_bytes'] / (1 << 30):.1f} GiB memory, {h['machine']}, "
        f"Linux {h['kernel']}, load {h['loadavg']}",
        file=out,
    )
    user = [r for r in rows if r.case in USER_CASES]
    rows = [r for r in rows if r.case not in USER_CASES]
    _start_cases.print_table(user, out)
    if not rows:
        return
    head = f"{'case':<8} {'name':<22} {'status':<7} {'MB/s':>9} {'seconds':>9} {'peak RSS MiB':>13} {'output MB':>10} {'ratio':>7}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        if r.status != "ok":
            print(f"{r.case:<8} {r.name:<22} {r.status:<7} {r.detail}", file=out)
            continue
        print(
            f"{r.case:<8} {r.name:<22} {r.status:<7} {r.mb_per_s:>9.1f} {r.seconds:>9.2f} "
            f"{r.peak_rss_mib:>13.1f} {r.output_bytes / MB:>10.2f} {r.ratio:>7.3f}",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny inputs (a few MB): a CI smoke run")
    ap.add_argument("--only", help=f"comma-separated cases to run ({', '.join(CASES)})")
    ap.add_argument("--json", type=Path, help="write the results as JSON to this file")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"cache/scratch dir ({DEFAULT_WORKDIR})",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement (median time, max RSS)"
    )
    args = ap.parse_args(argv)

    names = list(CASES) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(
            f"error: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}",
            file=sys.stderr,
        )
        return 2
    if args.repeat < 1:
        print("error: --repeat must be >= 1", file=sys.stderr)
        return 2
    workdir = args.workdir / ("quick" if args.quick else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        quick=args.quick,
        workdir=workdir,
        repeat=args.repeat,
        nydus_image=find_nydus_image(),
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )

    rows: list[Row] = []
    for name in names:
        rows += CASES[name](ctx)
    print_table(rows)
    if args.json:
        doc = {
            "version": 1,
            "quick": args.quick,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": host_info(),
            "nydus_image": ctx.nydus_image,
            "rows": [asdict(r) for r in rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
