"""What users feel, Nydus against the OCI way, on a real image (see ``images.py``).

Registered into ``run.py``'s CASES by :func:`register`:

* ``start``: time to a running workload.  OCI = pull every layer from the registry (manifest,
  config, layers; 3 layers at a time like containerd) with our ``RegistryClient``, unpack them
  with GNU tar applying OCI whiteouts, run.  Nydus = fetch manifest, config and the bootstrap
  layer, start ``nydusd`` with the registry backend and an empty blob cache, run.  Run =
  ``chroot ROOT python3 -c 'import boto3, sympy, django, jinja2, yaml, rich'`` (PYTHONPATH=/app)
  over an overlayfs whose lower dir is the image root, with /proc and /dev mounted.  Once on
  plain loopback and once through a 100 Mbit/s throttling proxy (``throttle.py``).  "Nydus
  optimized" = the conversion after ``nydusify optimize --workload`` with that command (once,
  not timed), mounted with ``fs_prefetch`` on (``START_PREFETCH``): its prefetch table is the
  workload's files, in a prefetch blob in first-access order.
* ``read-all``: ``tar -cf - ROOT | cat > /dev/null`` (a pipe, because GNU tar skips reading file
  data when its archive *is* /dev/null) through a fresh mount vs. OCI pull + unpack + the same tar.
* ``metadata``: ``find ROOT -printf '%i %s %m %T@'`` (an lstat of every entry) on the small-files
  image, cold then warm, through a fresh mount vs. the unpacked OCI tree.
* ``image-build``: ``nydusify convert`` wall time (pull + build + push) and ``nydus-image create
  --type targz-rafs`` MB/s per layer, with zstd and lz4_block; image size (bootstrap + blobs) vs.
  the OCI image's compressed size.

Every case is cold (page cache dropped, empty blob cache, fresh unpack dir) unless its row says
warm.  Each figure is the median of ``--repeat`` runs, with min and max in ``extra``.  Read
throughput (1 GiB sequential, 4 KiB random) is ``nydusd_cases.py``'s ``nydusd-seqread`` and
``nydusd-randread``.  ``--quick`` uses a generated tree of a few MB without python: the start
workload is then a host-side ``cat`` of the files it would read (the rows say so).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.images import MB, PY_WORKLOAD, Converted, Image, NotAvailable, Session
from benchmarks.nydusd_cases import drop_caches
from benchmarks.throttle import ThrottleProxy
from nydus.daemon.process import NydusdCommand, start_nydusd
from nydus.errors import NydusError

BIN = Path(sys.executable).parent
MIB = 1 << 20
THROTTLE_MBIT = 100.0
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CASE_NAMES = ("start", "read-all", "metadata", "image-build")
#: the prefetch configuration of the "Nydus optimized" start rows (v1 fs_prefetch)
START_PREFETCH = {"enable": True, "threads_count": 4, "prefetch_all": False}

_SESSION: dict[Path, Session] = {}


def session(ctx: Any) -> Session:
    if ctx.workdir not in _SESSION:
        _SESSION[ctx.workdir] = Session(ctx.workdir, ctx.log)
    return _SESSION[ctx.workdir]


def image_name(ctx: Any, big: str) -> str:
    return "quick" if ctx.quick else big


# -- small helpers -------------------------------------------------------------------------------------


def _sh(*cmd: str) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def _rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


class Stats:
    """Repeated measurements of one row."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.bytes: list[int] = []
        self.requests: list[int] = []
        self.extra: dict[str, list[float]] = {}

    def add(self, seconds: float, nbytes: int = 0, requests: int = 0, **extra: float) -> None:
        self.seconds.append(seconds)
        self.bytes.append(nbytes)
        self.requests.append(requests)
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)

    def median(self) -> float:
        return statistics.median(self.seconds)


def make_row(
    row_cls: type, case: str, name: str, tool: str, st: Stats, detail: str = "", **extra: Any
) -> Any:
    med = st.median()
    ex: dict[str, Any] = {
        "min_s": round(min(st.seconds), 3),
        "max_s": round(max(st.seconds), 3),
        "runs_seconds": [round(s, 3) for s in st.seconds],
        "bytes_fetched": int(statistics.median(st.bytes)) if st.bytes else 0,
        "requests": int(statistics.median(st.requests)) if st.requests else 0,
    }
    for k, vals in st.extra.items():
        ex[k] = round(statistics.median(vals), 3)
    ex.update(extra)
    return row_cls(case, name, tool, seconds=round(med, 3), detail=detail, extra=ex)


def failed_row(row_cls: type, case: str, name: str, tool: str, status: str, detail: str) -> Any:
    return row_cls(case, name, tool, status=status, detail=detail)


# -- the OCI way -----------------------------------------------------------------------------------------


def _manifest(client: Any, repo: str, tag: str) -> tuple[dict[str, Any], int, int]:
    got = client.get_manifest(repo, tag)
    m = json.loads(got.data)
    nbytes, reqs = len(got.data), 1
    if "manifests" in m:
        got = client.get_manifest(repo, m["manifests"][0]["digest"])
        m = json.loads(got.data)
        nbytes, reqs = nbytes + len(got.data), reqs + 1
    cfg = client.read_blob(repo, m["config"]["digest"])
    return m, nbytes + len(cfg), reqs + 1


def oci_pull_unpack(host: str, repo: str, dest: Path, scratch: Path) -> dict[str, float]:
    """Pull <repo>:latest from host into scratch, unpack into dest; return timings and counts."""
    from nydus.oci.registry import RegistryClient

    t0 = time.monotonic()
    scratch.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    with RegistryClient(host, insecure=True) as client:
        m, nbytes, reqs = _manifest(client, repo, "latest")
        layers = m["layers"]

        def get(i: int) -> int:
            return client.get_blob(repo, layers[i]["digest"], scratch / f"layer{i}.tar.gz")

        with ThreadPoolExecutor(3) as pool:
            nbytes += sum(pool.map(get, range(len(layers))))
        reqs += len(layers)
    t1 = time.monotonic()
    for i in range(len(layers)):
        unpack_layer(scratch / f"layer{i}.tar.gz", dest)
    t2 = time.monotonic()
    return {"pull_s": t1 - t0, "unpack_s": t2 - t1, "bytes": nbytes, "requests": reqs}


_UNGZ = ["unpigz", "-c"] if shutil.which("unpigz") else ["gzip", "-dc"]


def unpack_layer(layer: Path, dest: Path) -> None:
    """GNU tar extraction listing every member (-v), then OCI whiteouts applied from that list."""
    with open(layer, "rb") as f:
        gz = subprocess.Popen([*_UNGZ], stdin=f, stdout=subprocess.PIPE)
        tar = subprocess.run(
            [
                "tar",
                "-x",
                "-v",
                "--quoting-style=literal",
                "--numeric-owner",
                "-p",
                "-C",
                str(dest),
                "-f",
                "-",
            ],
            stdin=gz.stdout,
            capture_output=True,
        )
        assert gz.stdout is not None
        gz.stdout.close()
        gz.wait()
    if tar.returncode != 0 or gz.returncode != 0:
        raise RuntimeError(f"unpack {layer}: {tar.stderr.decode(errors='replace').strip()[-300:]}")
    names = [n.rstrip("/") for n in tar.stdout.decode("utf-8", "surrogateescape").splitlines()]
    names = [n.removeprefix("./") for n in names]
    whiteouts = [n for n in names if os.path.basename(n).startswith(".wh.")]
    if not whiteouts:
        return
    in_layer = set(names)
    for wh in whiteouts:
        parent, base = os.path.split(wh)
        pdir = dest / parent
        (dest / wh).unlink(missing_ok=True)
        if base == ".wh..wh..opq":
            for child in os.listdir(pdir):
                if os.path.join(parent, child) not in in_layer:
                    _remove(pdir / child)
        else:
            _remove(pdir / base[4:])


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()


# -- the Nydus way ---------------------------------------------------------------------------------------


def fetch_bootstrap(host: str, conv: Converted, dest: Path) -> tuple[int, int]:
    """Manifest, config and bootstrap layer of a converted image from `host`; the bootstrap
    written to `dest`. Returns the bytes and requests that took."""
    from nydus.oci.registry import RegistryClient

    with RegistryClient(host, insecure=True) as client:
        _m, nbytes, reqs = _manifest(client, conv.repo, conv.tag)
        layer = client.read_blob(conv.repo, conv.bootstrap_layer["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "image/image.boot")
        src = tar.extractfile(member)
        assert src is not None
        dest.write_bytes(src.read())
    return nbytes + len(layer), reqs + 1


def registry_nydusd_config(host: str, repo: str, cache: Path) -> dict[str, Any]:
    return {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"scheme": "http", "host": host, "repo": repo},
            },
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}},
        },
        "mode": "direct",
        "digest_validate": False,
    }


class NydusMount:
    """Fetch manifest, config and bootstrap layer from ``host``; run nydusd on them."""

    def __init__(
        self,
        base: Path,
        host: str,
        conv: Converted,
        *,
        threads: int = 4,
        amplify_io: int | None = None,
        prefetch: dict[str, Any] | None = None,
        driver: str = "fuse",
    ) -> None:
        self.base = base
        _rmtree(base)
        base.mkdir(parents=True)
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        self.t0 = time.monotonic()
        boot = base / "image.boot"
        self.meta_bytes, self.meta_requests = fetch_bootstrap(host, conv, boot)
        self.bootstrap = boot
        cfg = registry_nydusd_config(host, conv.repo, base / "cache")
        if amplify_io is not None:
            cfg["amplify_io"] = amplify_io
        if prefetch is not None:
            cfg["fs_prefetch"] = prefetch
        (base / "cache").mkdir()
        (base / "config.json").write_text(json.dumps(cfg))
        command = NydusdCommand(
            self.mnt,
            boot,
            base / "api.sock",
            config=base / "config.json",
            log_level="warn",
            threads=threads,
            binary=str(BIN / "nydusd"),
            fs_driver=None if driver == "fuse" else driver,  # fuse: upstream's command line
        )
        self.process = start_nydusd(command, base / "nydusd.log", timeout=60)
        self.ready_s = time.monotonic() - self.t0
        # exec of nydusd until it answered RUNNING (the mount came before that)
        self.mount_s = self.process.ready_seconds or 0.0

    def backend_metrics(self) -> dict[str, Any]:
        return self._api("v1/metrics/backend")

    def cache_metrics(self) -> dict[str, Any]:
        return self._api("v1/metrics/blobcache")

    def _api(self, path: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            try:
                metrics: dict[str, Any] = self.process.client.call("GET", path)
                return metrics
            except NydusError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def fetched(self) -> tuple[int, int]:
        """Bytes and requests so far: manifest + config + bootstrap layer + backend reads."""
        m = self.backend_metrics()
        return self.meta_bytes + int(m["read_amount_total"]), self.meta_requests + int(
            m["read_count"]
        )

    def close(self) -> None:
        self.process.stop(timeout=15)


# -- running the workload --------------------------------------------------------------------------------


@contextmanager
def overlay(lower: Path, base: Path, with_sys: bool) -> Iterator[Path]:
    """An overlayfs over ``lower`` (upper/work under base), with /proc and /dev if ``with_sys``."""
    from nydus.converter.workload import chroot_overlay

    for d in ("upper", "work", "merged"):
        _rmtree(base / d)
    try:
        with chroot_overlay(lower, base, with_sys) as merged:
            yield merged
    finally:
        for d in ("upper", "work", "merged"):
            _rmtree(base / d)


def run_workload(img: Image, root: Path, strace_out: Path | None = None) -> str:
    """Run the image's workload in ``root``; return a short description. Raises on failure."""
    if img.has_python:
        env = {
            "PATH": ENV_PATH,
            "PYTHONPATH": "/app",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        cmd = ["chroot", str(root), "/usr/bin/python3", "-c", PY_WORKLOAD]
        if strace_out is not None:
            cmd = [
                "strace",
                "-f",
                "-qq",
                "-e",
                "trace=openat,open,execve",
                "-o",
                str(strace_out),
                *cmd,
            ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or r.stdout.strip() != "1":
            raise RuntimeError(f"workload failed (exit {r.returncode}): {r.stderr.strip()[-400:]}")
        return "chroot python3 -c 'import boto3, sympy, django, jinja2, yaml, rich'"
    files = [str(root / f) for f in img.workload_files]
    r = subprocess.run(
        ["cat", *files], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"host-side cat failed: {r.stderr.strip()[-300:]}")
    return (
        f"no python in the quick image: host-side cat of the {len(files)} files the workload reads"
    )


def _resolve(root: Path, path: str) -> str | None:
    """``path`` as seen by a process chrooted in ``root``, symlinks resolved; None if missing."""
    parts = [p for p in path.split("/") if p and p != "."]
    out: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if out:
                out.pop()
            continue
        p = root.joinpath(*out, name)
        if p.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(p)
            if target.startswith("/"):
                out = []
            parts = [x for x in target.split("/") if x and x != "."] + parts
            continue
        if not os.path.lexists(p):
            return None
        out.append(name)
    return "/" + "/".join(out)


_OPEN_RE = re.compile(r'(?:openat\([^,]+, |open\(|execve\()"([^"]+)".*\) = (\d+)')


def needed_chunks(
    img: Image, oci_root: Path, bootstrap: Path, strace_log: Path | None
) -> dict[str, int]:
    """Compressed size of the (unique) chunks of every regular file the workload opened."""
    from nydus.format.v6reader import RafsV6Super

    paths: set[str] = set()
    if strace_log is not None:
        for line in strace_log.read_text(errors="replace").splitlines():
            m = _OPEN_RE.search(line)
            if m:
                paths.add(m.group(1))
        paths.add("/lib64/ld-linux-x86-64.so.2")
    else:
        paths.update("/" + f for f in img.workload_files)
    sb = RafsV6Super(bootstrap.read_bytes())
    seen: dict[tuple[int, int], int] = {}
    files = 0
    for p in sorted(paths):
        real = _resolve(oci_root, p)
        if real is None or not (oci_root / real.lstrip("/")).is_file():
            continue
        nid: int | None = sb.root_ino
        for part in real.strip("/").split("/"):
            nid = sb.lookup(nid, part.encode()) if nid is not None else None
        if nid is None:
            continue
        files += 1
        for c in sb.chunks(nid):
            seen[(c.blob_index, c.compressed_offset or c.uncompressed_offset)] = (
                c.compressed_size or 0
            )
    return {"files": files, "chunks": len(seen), "compressed_bytes": sum(seen.values())}


# -- cases -------------------------------------------------------------------------------------------------


def _prepare(
    ctx: Any, row_cls: type, case: str, image: str
) -> tuple[str, Any, Any, Any] | list[Any]:
    """(name, session, image, zstd conversion) of a case's image, or its "not run" rows."""
    name = image_name(ctx, image)
    try:
        sess = session(ctx)
        img = sess.image(name)
    except NotAvailable as exc:
        return [
            failed_row(row_cls, case, f"{case} {k}", k, "skipped", f"not run: {exc}")
            for k in ("OCI", "Nydus")
        ]
    return name, sess, img, sess.convert(name, "zstd")


def case_start(ctx: Any, row_cls: type) -> list[Any]:
    prepared = _prepare(ctx, row_cls, "start", "debian")
    if isinstance(prepared, list):
        return prepared
    name, sess, img, conv = prepared
    base = ctx.workdir / "run-start"
    rows: list[Any] = []
    opt, opt_error = None, ""
    try:
        opt = sess.optimize(
            name,
            optimize_workload() if img.has_python else None,
            None if img.has_python else ["/" + f for f in img.workload_files],
        )
    except RuntimeError as exc:
        opt_error = str(exc)
    accounting: dict[str, int] | None = None
    what = ""
    for net in ("loopback", f"{THROTTLE_MBIT:g} Mbit/s"):
        with ExitStack() as stack:
            if net == "loopback":
                host = sess.host
            else:
                proxy = stack.enter_context(
                    ThrottleProxy(
                        int(sess.host.rsplit(":", 1)[1]), mbit=THROTTLE_MBIT, max_seconds=3600
                    )
                )
                host = proxy.host
            oci, nydus, optimized, erofs = Stats(), Stats(), Stats(), Stats()
            for i in range(ctx.repeat):
                # OCI: pull + unpack + run
                ctx.log(f"start [{net}] run {i + 1}/{ctx.repeat}: OCI pull + unpack + run")
                _rmtree(base)
                dropped = drop_caches()
                t0 = time.monotonic()
                got = oci_pull_unpack(host, name, base / "oci-root", base / "oci-blobs")
                with overlay(base / "oci-root", base / "ovl", img.has_python) as merged:
                    what = run_workload(img, merged)
                    secs = time.monotonic() - t0
                    if accounting is None:
                        trace = (
                            base / "strace.log"
                            if img.has_python and shutil.which("strace")
                            else None
                        )
                        if trace is not None:
                            run_workload(img, merged, strace_out=trace)
                        accounting = needed_chunks(
                            img, base / "oci-root", conv.bootstrap_file, trace
                        )
                oci.add(
                    secs,
                    int(got["bytes"]),
                    int(got["requests"]),
                    pull_s=got["pull_s"],
                    unpack_s=got["unpack_s"],
                )
                ctx.log(
                    f"  {secs:.2f} s (pull {got['pull_s']:.2f} s, unpack {got['unpack_s']:.2f} s)"
                )
                _rmtree(base)
                # Nydus: bootstrap + nydusd + run, with each driver
                for driver, stats in (("fuse", nydus), ("erofs", erofs)):
                    ctx.log(
                        f"start [{net}] run {i + 1}/{ctx.repeat}: Nydus bootstrap + nydusd "
                        f"({driver}) + run"
                    )
                    drop_caches()
                    t0 = time.monotonic()
                    mount = NydusMount(base / "nydus", host, conv, driver=driver)
                    try:
                        with overlay(mount.mnt, base / "ovl", img.has_python) as merged:
                            run_workload(img, merged)
                            secs = time.monotonic() - t0
                        nbytes, reqs = mount.fetched()
                    finally:
                        mount.close()
                    stats.add(secs, nbytes, reqs, mount_s=mount.ready_s)
                    ctx.log(
                        f"  {secs:.2f} s (mounted after {mount.ready_s:.2f} s), fetched "
                        f"{nbytes / MB:.2f} MB in {reqs} requests"
                    )
                    _rmtree(base)
                if opt is not None:
                    ctx.log(f"start [{net}] run {i + 1}/{ctx.repeat}: Nydus optimized + prefetch")
                    drop_caches()
                    t0 = time.monotonic()
                    mount = NydusMount(base / "nydus", host, opt, prefetch=START_PREFETCH)
                    try:
                        with overlay(mount.mnt, base / "ovl", img.has_python) as merged:
                            run_workload(img, merged)
                            secs = time.monotonic() - t0
                        nbytes, reqs = mount.fetched()
                        pm = mount.cache_metrics()
                    finally:
                        mount.close()
                    optimized.add(
                        secs,
                        nbytes,
                        reqs,
                        mount_s=mount.ready_s,
                        prefetch_requests=pm["prefetch_requests_count"],
                        prefetch_bytes=pm["prefetch_data_amount"],
                        demand_reads_from_prefetch=pm.get("prefetch_served_reads", 0),
                    )
                    ctx.log(
                        f"  {secs:.2f} s (mounted after {mount.ready_s:.2f} s), fetched "
                        f"{nbytes / MB:.2f} MB in {reqs} requests ({pm['prefetch_requests_count']}"
                        f" prefetch requests, {pm['prefetch_data_amount'] / MB:.2f} MB)"
                    )
                    _rmtree(base)
            caches = "" if dropped else "; page cache NOT dropped (not root)"
            orow = make_row(
                row_cls,
                "start",
                f"start OCI {net}",
                "OCI",
                oci,
                f"{what}; pull+unpack+run{caches}",
                image=img.summary(),
                network=net,
            )
            ratio = round(nydus.median() / oci.median(), 3)
            nrow = make_row(
                row_cls,
                "start",
                f"start Nydus {net}",
                "Nydus",
                nydus,
                f"Nydus/OCI {ratio:.2f} ({oci.median() / nydus.median():.1f}x faster)"
                f"; fetched/needed {statistics.median(nydus.bytes) / max(1, accounting['compressed_bytes'] if accounting else 1):.2f}",
                image=img.summary(),
                network=net,
                nydus_over_oci=ratio,
                needed=accounting,
                image_compressed=img.compressed,
                nydus_image_size=conv.size,
            )
            eratio = round(erofs.median() / nydus.median(), 3)
            erow = make_row(
                row_cls,
                "start",
                f"start Nydus erofs {net}",
                "Nydus erofs",
                erofs,
                f"--fs-driver erofs; erofs/fuse {eratio:.2f}; Nydus erofs/OCI "
                f"{erofs.median() / oci.median():.2f}",
                image=img.summary(),
                network=net,
                erofs_over_fuse=eratio,
                nydus_over_oci=round(erofs.median() / oci.median(), 3),
            )
            rows += [orow, nrow, erow]
            needed = max(1, accounting["compressed_bytes"] if accounting else 1)
            if opt is None:
                rows.append(
                    failed_row(
                        row_cls,
                        "start",
                        f"start Nydus optimized {net}",
                        "Nydus optimized",
                        "failed",
                        opt_error,
                    )
                )
                continue
            oratio = round(optimized.median() / oci.median(), 3)
            rows.append(
                make_row(
                    row_cls,
                    "start",
                    f"start Nydus optimized {net}",
                    "Nydus optimized",
                    optimized,
                    f"Nydus optimized/OCI {oratio:.2f}; fetched/needed "
                    f"{statistics.median(optimized.bytes) / needed:.2f}; nydusify optimize "
                    f"{'--workload' if img.has_python else '--prefetch-files'}, fs_prefetch "
                    f"threads_count {START_PREFETCH['threads_count']}",
                    image=img.summary(),
                    network=net,
                    nydus_over_oci=oratio,
                    needed=accounting,
                    optimize_s=round(opt.seconds, 1),
                    nydus_image_size=opt.size,
                )
            )
    return rows


def optimize_workload() -> list[str]:
    """The start workload as a command run inside the image (for ``nydusify optimize``)."""
    env = ["PYTHONPATH=/app", "HOME=/root", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"]
    return ["/usr/bin/env", *env, "/usr/bin/python3", "-c", PY_WORKLOAD]


def case_read_all(ctx: Any, row_cls: type) -> list[Any]:
    prepared = _prepare(ctx, row_cls, "read-all", "debian")
    if isinstance(prepared, list):
        return prepared
    name, sess, img, conv = prepared
    base = ctx.workdir / "run-read-all"
    tar_cmd = "tar -C ROOT -cf - . | cat > /dev/null"

    def tar_all(root: Path) -> None:
        r = subprocess.run(
            ["bash", "-c", f"set -o pipefail; tar -C '{root}' -cf - . | cat > /dev/null"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"tar of {root} failed: {r.stderr.strip()[-300:]}")

    oci_pu, oci_all, nyd, nyd_erofs = Stats(), Stats(), Stats(), Stats()
    for i in range(ctx.repeat):
        ctx.log(f"read-all run {i + 1}/{ctx.repeat}: OCI pull + unpack + tar")
        _rmtree(base)
        drop_caches()
        t0 = time.monotonic()
        got = oci_pull_unpack(sess.host, name, base / "oci-root", base / "oci-blobs")
        t1 = time.monotonic()
        tar_all(base / "oci-root")
        t2 = time.monotonic()
        oci_pu.add(
            t1 - t0,
            int(got["bytes"]),
            int(got["requests"]),
            pull_s=got["pull_s"],
            unpack_s=got["unpack_s"],
        )
        oci_all.add(t2 - t0, int(got["bytes"]), int(got["requests"]), tar_s=t2 - t1)
        ctx.log(f"  pull+unpack {t1 - t0:.2f} s, tar {t2 - t1:.2f} s")
        _rmtree(base)
        for driver, stats in (("fuse", nyd), ("erofs", nyd_erofs)):
            ctx.log(f"read-all run {i + 1}/{ctx.repeat}: Nydus bootstrap + nydusd ({driver}) + tar")
            drop_caches()
            t0 = time.monotonic()
            mount = NydusMount(base / "nydus", sess.host, conv, driver=driver)
            try:
                tar_all(mount.mnt)
                secs = time.monotonic() - t0
                nbytes, reqs = mount.fetched()
            finally:
                mount.close()
            stats.add(secs, nbytes, reqs, mount_s=mount.ready_s)
            ctx.log(f"  {secs:.2f} s, fetched {nbytes / MB:.1f} MB in {reqs} requests")
            _rmtree(base)
    r_pu = round(nyd.median() / oci_pu.median(), 3)
    r_all = round(nyd.median() / oci_all.median(), 3)
    return [
        make_row(
            row_cls,
            "read-all",
            "read-all OCI pull+unpack",
            "OCI",
            oci_pu,
            "pull + unpack only",
            image=img.summary(),
        ),
        make_row(
            row_cls,
            "read-all",
            "read-all OCI +tar",
            "OCI",
            oci_all,
            f"pull + unpack + {tar_cmd}",
            image=img.summary(),
        ),
        make_row(
            row_cls,
            "read-all",
            "read-all Nydus",
            "Nydus",
            nyd,
            f"bootstrap + nydusd + {tar_cmd}; Nydus/OCI pull+unpack {r_pu:.2f}, "
            f"Nydus/OCI +tar {r_all:.2f}",
            image=img.summary(),
            nydus_over_oci=r_pu,
            nydus_over_oci_tar=r_all,
        ),
        make_row(
            row_cls,
            "read-all",
            "read-all Nydus erofs",
            "Nydus erofs",
            nyd_erofs,
            f"the same with --fs-driver erofs; erofs/fuse {nyd_erofs.median() / nyd.median():.2f}",
            image=img.summary(),
            erofs_over_fuse=round(nyd_erofs.median() / nyd.median(), 3),
        ),
    ]


def _find(root: Path) -> int:
    r = subprocess.run(["find", str(root), "-printf", "%i %s %m %T@\n"], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"find {root} failed: {r.stderr.decode(errors='replace')[-300:]}")
    return r.stdout.count(b"\n")


def case_metadata(ctx: Any, row_cls: type) -> list[Any]:
    prepared = _prepare(ctx, row_cls, "metadata", "smallfiles")
    if isinstance(prepared, list):
        return prepared
    name, sess, img, conv = prepared
    base = ctx.workdir / "run-metadata"
    _rmtree(base)
    ctx.log("metadata: OCI pull + unpack (not timed)")
    oci_pull_unpack(sess.host, name, base / "oci-root", base / "oci-blobs")
    stats = {
        k: Stats()
        for k in (
            "oci cold",
            "oci warm",
            "nydus cold",
            "nydus warm",
            "nydus erofs cold",
            "nydus erofs warm",
        )
    }
    entries = 0
    try:
        for i in range(ctx.repeat):
            ctx.log(f"metadata run {i + 1}/{ctx.repeat}: find+stat of the OCI tree, cold and warm")
            drop_caches()
            t0 = time.monotonic()
            entries = _find(base / "oci-root")
            stats["oci cold"].add(time.monotonic() - t0)
            t0 = time.monotonic()
            _find(base / "oci-root")
            stats["oci warm"].add(time.monotonic() - t0)
            ctx.log(
                f"metadata run {i + 1}/{ctx.repeat}: find+stat through a fresh mount, cold and warm"
            )
            for driver, key in (("fuse", "nydus"), ("erofs", "nydus erofs")):
                drop_caches()
                mount = NydusMount(base / "nydus", sess.host, conv, driver=driver)
                try:
                    t0 = time.monotonic()
                    n = _find(mount.mnt)
                    stats[f"{key} cold"].add(time.monotonic() - t0)
                    t0 = time.monotonic()
                    _find(mount.mnt)
                    stats[f"{key} warm"].add(time.monotonic() - t0)
                finally:
                    mount.close()
                if n != entries:
                    raise RuntimeError(
                        f"metadata: {driver} mount lists {n} entries, OCI tree {entries}"
                    )
            ctx.log(
                f"  OCI {stats['oci cold'].seconds[-1]:.2f}/{stats['oci warm'].seconds[-1]:.2f} s, "
                f"Nydus {stats['nydus cold'].seconds[-1]:.2f}/{stats['nydus warm'].seconds[-1]:.2f} s "
                f"(cold/warm, {entries} entries)"
            )
    finally:
        _rmtree(base)
    rows = []
    for temp in ("cold", "warm"):
        oci, nyd = stats[f"oci {temp}"], stats[f"nydus {temp}"]
        ratio = round(nyd.median() / oci.median(), 3)
        rows.append(
            make_row(
                row_cls,
                "metadata",
                f"metadata OCI {temp}",
                "OCI",
                oci,
                f"find -printf (lstat) of {entries} entries, unpacked tree",
                image=img.summary(),
                entries=entries,
            )
        )
        rows.append(
            make_row(
                row_cls,
                "metadata",
                f"metadata Nydus {temp}",
                "Nydus",
                nyd,
                f"same through the mount; Nydus/OCI {ratio:.2f}",
                image=img.summary(),
                entries=entries,
                nydus_over_oci=ratio,
            )
        )
        ero = stats[f"nydus erofs {temp}"]
        eratio = round(ero.median() / oci.median(), 3)
        rows.append(
            make_row(
                row_cls,
                "metadata",
                f"metadata Nydus erofs {temp}",
                "Nydus erofs",
                ero,
                f"same with --fs-driver erofs; Nydus erofs/OCI {eratio:.2f}",
                image=img.summary(),
                entries=entries,
                nydus_over_oci=eratio,
            )
        )
    return rows


def compile_sources() -> None:
    """Byte-compile the nydus package (a pip install does so; an editable one under
    PYTHONDONTWRITEBYTECODE never writes .pyc), so that a start measures imports, not
    compiling."""
    import compileall

    import nydus

    compileall.compile_dir(os.path.dirname(nydus.__file__), quiet=1)


def _cpu_seconds(pid: int) -> float:
    """CPU time so far of every thread of `pid` (schedstat, nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def time_mount(base: Path, boot: Path, config: dict[str, Any], driver: str) -> tuple[float, float]:
    """exec of nydusd -> its mountpoint shows the image (st_dev changes): wall seconds and
    the daemon's CPU seconds by then."""
    _rmtree(base)
    mnt = base / "mnt"
    mnt.mkdir(parents=True)
    (base / "cache").mkdir()
    config = json.loads(json.dumps(config).replace("@CACHE@", str(base / "cache")))
    (base / "config.json").write_text(json.dumps(config))
    command = NydusdCommand(
        mnt,
        boot,
        base / "api.sock",
        config=base / "config.json",
        log_level="warn",
        binary=str(BIN / "nydusd"),
        fs_driver=None if driver == "fuse" else driver,
    )
    dev = os.stat(base).st_dev
    t0 = time.perf_counter()
    proc = start_nydusd(command, base / "nydusd.log", wait=False)
    try:
        while True:
            try:
                if os.stat(mnt).st_dev != dev:
                    break
            except OSError:
                pass
            if not proc.alive() or time.perf_counter() - t0 > 60:
                raise RuntimeError(f"nydusd ({driver}) did not mount: {proc.last_line()}")
            time.sleep(0.0005)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds(proc.pid)
        proc.wait_running(timeout=60)  # so that stop() also clears the erofs blob mount
    finally:
        proc.stop(timeout=15)
    return wall, cpu


def case_mount(ctx: Any, row_cls: type) -> list[Any]:
    """exec of nydusd -> mounted, both drivers, registry backend on loopback (the bootstrap
    is local; nothing is fetched before the mount)."""
    prepared = _prepare(ctx, row_cls, "mount", "debian")
    if isinstance(prepared, list):
        return prepared
    _name, sess, img, conv = prepared
    base = ctx.workdir / "run-mount"
    _rmtree(base)
    base.mkdir(parents=True)
    boot = base / "image.boot"
    fetch_bootstrap(sess.host, conv, boot)
    compile_sources()
    config = registry_nydusd_config(sess.host, conv.repo, Path("@CACHE@"))
    runs = 3 if ctx.quick else max(7, 3 * ctx.repeat)
    stats: dict[str, Stats] = {}
    for driver in ("fuse", "erofs"):
        st = stats[driver] = Stats()
        time_mount(base / driver, boot, config, driver)  # the interpreter into the page cache
        for i in range(runs):
            wall, cpu = time_mount(base / driver, boot, config, driver)
            st.add(wall, cpu_s=cpu)
            ctx.log(
                f"mount [{driver}] run {i + 1}/{runs}: {wall * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU)"
            )
    _rmtree(base)
    rows = []
    for driver, st in stats.items():
        rows.append(
            make_row(
                row_cls,
                "mount",
                f"mount {driver} loopback",
                f"Nydus {driver}",
                st,
                f"exec of nydusd -> mounted, --fs-driver {driver}, registry backend; "
                f"median of {runs}; CPU {statistics.median(st.extra['cpu_s']) * 1000:.0f} ms",
                image=img.summary(),
            )
        )
    return rows


def case_image_build(ctx: Any, row_cls: type) -> list[Any]:
    from tests.helpers.proc import run_measured

    name = image_name(ctx, "debian")
    try:
        sess = session(ctx)
        img = sess.image(name)
        source = sess.push(name)
    except NotAvailable as exc:
        return [
            failed_row(
                row_cls, "image-build", "nydusify convert", "nydusify", "skipped", f"not run: {exc}"
            )
        ]
    rows: list[Any] = []
    oci_size = img.compressed
    base = ctx.workdir / "run-image-build"
    for comp in ("zstd", "lz4_block"):
        st = Stats()
        size = 0
        for i in range(ctx.repeat):
            ctx.log(f"image-build: nydusify convert --compressor {comp} run {i + 1}/{ctx.repeat}")
            work = base / f"convert-{comp}-{i}"
            _rmtree(work)
            target = f"{sess.host}/{name}-{comp.replace('_', '-')}-{i}:nydus"
            m = run_measured(
                [
                    str(BIN / "nydusify"),
                    "convert",
                    "--source",
                    source,
                    "--target",
                    target,
                    "--source-insecure",
                    "--target-insecure",
                    "--compressor",
                    comp,
                    "--work-dir",
                    str(work),
                ],
                timeout=3600,
            )
            _rmtree(work)
            if m.returncode != 0:
                tail = (m.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                rows.append(
                    failed_row(
                        row_cls,
                        "image-build",
                        f"nydusify convert {comp}",
                        "nydusify",
                        "failed",
                        f"exit {m.returncode}: {tail}",
                    )
                )
                break
            size = _remote_size(sess.host, f"{name}-{comp.replace('_', '-')}-{i}", "nydus")
            st.add(m.seconds, size, 0, peak_rss_mib=m.maxrss_bytes / MIB)
            ctx.log(f"  {m.seconds:.1f} s, image {size / MB:.1f} MB")
        else:
            row = make_row(
                row_cls,
                "image-build",
                f"nydusify convert {comp}",
                "nydusify",
                st,
                f"pull + build + push; image {size / MB:.1f} MB = {size / oci_size:.3f} x "
                f"OCI gzip {oci_size / MB:.1f} MB",
                image=img.summary(),
                oci_size=oci_size,
                size_over_oci=round(size / oci_size, 4),
            )
            row.output_bytes, row.input_bytes = size, img.uncompressed
            row.ratio = round(size / oci_size, 4)
            row.mb_per_s = round(img.uncompressed / MB / st.median(), 2)
            rows.append(row)
        # nydus-image create per layer
        for li, layer in enumerate(img.layers, 1):
            st = Stats()
            out = base / f"create-{comp}-{li}"
            status = ""
            for i in range(ctx.repeat):
                _rmtree(out)
                out.mkdir(parents=True)
                ctx.log(
                    f"image-build: nydus-image create layer {li} --compressor {comp} run {i + 1}/{ctx.repeat}"
                )
                m = run_measured(
                    [
                        str(BIN / "nydus-image"),
                        "create",
                        "--type",
                        "targz-rafs",
                        layer.file,
                        "--bootstrap",
                        str(out / "bootstrap"),
                        "--blob",
                        str(out / "blob"),
                        "--compressor",
                        comp,
                        "--log-level",
                        "warn",
                    ],
                    timeout=3600,
                )
                if m.returncode != 0:
                    status = (m.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                    break
                size = sum(p.stat().st_size for p in out.iterdir())
                st.add(m.seconds, size, 0, peak_rss_mib=m.maxrss_bytes / MIB)
            _rmtree(out)
            lname = f"create layer {li} {comp}"
            if status:
                rows.append(
                    failed_row(row_cls, "image-build", lname, "nydus-image", "failed", status)
                )
                continue
            row = make_row(
                row_cls,
                "image-build",
                lname,
                "nydus-image",
                st,
                f"{layer.what[:60]}: {layer.tar_bytes / MB:.1f} MB tar, "
                f"{layer.size / MB:.1f} MB gzip",
                image=img.summary(),
            )
            row.input_bytes = layer.tar_bytes
            row.mb_per_s = round(layer.tar_bytes / MB / st.median(), 2)
            row.output_bytes = int(statistics.median(st.bytes))
            row.ratio = round(row.output_bytes / layer.size, 4)  # vs the gzip layer
            rows.append(row)
    _rmtree(base)
    return rows


def _remote_size(host: str, repo: str, tag: str) -> int:
    from nydus.oci.registry import RegistryClient

    with RegistryClient(host, insecure=True) as client:
        m = json.loads(client.get_manifest(repo, tag).data)
        if "manifests" in m:
            m = json.loads(client.get_manifest(repo, m["manifests"][0]["digest"]).data)
    return sum(int(x["size"]) for x in m["layers"])


# -- registration and the table -------------------------------------------------------------------------


def register(cases: dict[str, Callable[[Any], list[Any]]], row_cls: type) -> None:
    """Add start, read-all, metadata and image-build to run.py's CASES."""
    fns = {
        "start": case_start,
        "read-all": case_read_all,
        "metadata": case_metadata,
        "mount": case_mount,
        "image-build": case_image_build,
    }
    for case, fn in fns.items():
        cases[case] = _guarded(case, fn, row_cls)


def _guarded(
    case: str, fn: Callable[[Any, type], list[Any]], row_cls: type
) -> Callable[[Any], list[Any]]:
    def run(ctx: Any) -> list[Any]:
        try:
            return fn(ctx, row_cls)
        except Exception as exc:  # a broken case must not take the others down
            ctx.log(f"{case}: failed: {type(exc).__name__}: {exc}")
            return [
                row_cls(
                    case, case, "-", status="failed", detail=f"{type(exc).__name__}: {exc}"[:400]
                )
            ]

    return run


def print_table(rows: list[Any], out: Any = sys.stdout) -> None:
    """The user-facing rows: median [min..max] seconds, bytes and requests fetched, detail."""
    if not rows:
        return
    images_seen = {r.extra.get("image") for r in rows if r.extra.get("image")}
    for s in sorted(images_seen):
        print(f"image  {s}", file=out)
    head = (
        f"{'case':<12} {'name':<28} {'status':<7} {'median s':>9} {'min s':>8} {'max s':>8} "
        f"{'fetched MB':>10} {'requests':>8}  detail"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        if r.status != "ok":
            print(f"{r.case:<12} {r.name:<28} {r.status:<7} {r.detail}", file=out)
            continue
        e = r.extra
        fetched = f"{e['bytes_fetched'] / MB:10.2f}" if e.get("requests") else f"{'':>10}"
        reqs = f"{e['requests']:8d}" if e.get("requests") else f"{'':>8}"
        detail = r.detail
        if r.case == "image-build" and r.name.startswith("create"):
            detail = f"{r.mb_per_s:.1f} MB/s; {detail}"
        print(
            f"{r.case:<12} {r.name:<28} {r.status:<7} {r.seconds:>9.2f} {e['min_s']:>8.2f} "
            f"{e['max_s']:>8.2f} {fetched} {reqs}  {detail}",
            file=out,
        )
