"""``ctr-run``: a container start with containerd, from pull to the workload's exit.

Nydus = ``ctr-remote image rpull --snapshotter nydus`` (our ``containerd-nydus-grpc``, dedicated
nydusd, empty blob cache) then ``ctr run --rm --snapshotter nydus``; OCI = containerd's own
``ctr image pull`` (every layer downloaded and unpacked by containerd into its overlayfs
snapshotter) then ``ctr run --rm``. Both against one private containerd (tests/snapshotter's
harness), cold: page cache dropped, image removed (``ctr image rm --sync``: content, snapshots,
our daemon and cache files go) before every run. Workload: the Debian + python image's
``python3 -c 'import boto3, sympy, django, jinja2, yaml, rich'`` (PYTHONPATH=/app); ``--quick``
uses the busybox test image and ``sha256sum /data/big``. Loopback, then 100 Mbit/s through
``throttle.py`` (the registry host of both references is the proxy's, so nydusd's lazy reads
are throttled too; fetched MB = bytes the proxy sent).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Any

from benchmarks.images import MB, PY_WORKLOAD, NotAvailable
from benchmarks.nydusd_cases import drop_caches
from benchmarks.start_cases import (
    THROTTLE_MBIT,
    Stats,
    _guarded,
    failed_row,
    make_row,
    session,
)
from benchmarks.throttle import ThrottleProxy

CASE = "ctr-run"


def _rehost(ref: str, host: str) -> str:
    return host + "/" + ref.split("/", 1)[1]


def case_ctr_run(ctx: Any, row_cls: type) -> list[Any]:
    from tests.snapshotter.client import start_snapshotter
    from tests.snapshotter.containerd import Containerd, missing_tools, push_busybox
    from tests.snapshotter.env import convert, stop_daemons, write_template

    def skipped(why: str) -> list[Any]:
        return [
            failed_row(row_cls, CASE, f"{CASE} {k}", k, "skipped", f"not run: {why}")
            for k in ("OCI", "Nydus")
        ]

    if os.geteuid() != 0:
        return skipped("needs root (containerd, runc, mounts)")
    missing = missing_tools()
    if missing:
        return skipped(f"missing {', '.join(missing)}")
    try:
        sess = session(ctx)
    except NotAvailable as exc:
        return skipped(str(exc))
    work = ctx.workdir / "ctr-run"
    work.mkdir(parents=True, exist_ok=True)
    if ctx.quick:
        oci_ref = push_busybox(work / "image", sess.host, "busybox-ctr")
        nydus_ref = oci_ref + "-nydus"
        convert(oci_ref, nydus_ref, work / "convert")
        cmd, env, what, summary = ["sha256sum", "/data/big"], [], "sha256sum /data/big", "busybox"
    else:
        img = sess.image("debian")
        oci_ref = sess.push("debian")
        nydus_ref = sess.convert("debian", "zstd").ref
        cmd = ["python3", "-c", PY_WORKLOAD]
        env = ["--env", "PYTHONPATH=/app", "--env", "LANG=C.UTF-8"]
        what, summary = (
            "python3 -c 'import boto3, sympy, django, jinja2, yaml, rich'",
            img.summary(),
        )
    tpl = write_template(work / "nydusd-config.json")
    rows: list[Any] = []
    with ExitStack() as stack:
        sn = start_snapshotter(work / "sn", "--nydusd-config", str(tpl), "--log-level", "info")
        stack.callback(stop_daemons, sn.root)
        stack.callback(sn.stop)
        ctd = Containerd(work / "ctd", sn.sock)
        ctd.start()
        stack.callback(ctd.stop)
        for net in ("loopback", f"{THROTTLE_MBIT:g} Mbit/s"):
            proxy = None
            host = sess.host
            if net != "loopback":
                proxy = ThrottleProxy(
                    int(sess.host.rsplit(":", 1)[1]), mbit=THROTTLE_MBIT, max_seconds=3600
                )
                stack.enter_context(proxy)
                host = proxy.host
            refs = {"OCI": _rehost(oci_ref, host), "Nydus": _rehost(nydus_ref, host)}
            stats = {"OCI": Stats(), "Nydus": Stats()}
            for i in range(ctx.repeat):
                for kind in ("OCI", "Nydus"):
                    ref = refs[kind]
                    snap = ["--snapshotter", "nydus"] if kind == "Nydus" else []
                    ctx.log(f"{CASE} [{net}] run {i + 1}/{ctx.repeat}: {kind}")
                    drop_caches()
                    sent0 = proxy.down.total if proxy else 0
                    t0 = time.monotonic()
                    if kind == "Nydus":
                        ctd.ctr("image", "rpull", "--plain-http", *snap, ref, tool="ctr-remote",
                                timeout=3600)  # fmt: skip
                    else:
                        ctd.ctr("image", "pull", "--plain-http", ref, timeout=3600)
                    pulled = time.monotonic() - t0
                    ctd.ctr("run", "--rm", *snap, *env, ref, f"bench-{i}", *cmd, timeout=3600)
                    secs = time.monotonic() - t0
                    sent = (proxy.down.total - sent0) if proxy else 0
                    stats[kind].add(secs, sent, 0, pull_s=pulled, run_s=secs - pulled)
                    ctx.log(f"  {secs:.2f} s (pull {pulled:.2f} s, run {secs - pulled:.2f} s)")
                    ctd.ctr("images", "rm", "--sync", ref)
            ratio = round(stats["Nydus"].median() / stats["OCI"].median(), 3)
            for kind in ("OCI", "Nydus"):
                st = stats[kind]
                fetched = f"; fetched {st.bytes[-1] / MB:.1f} MB" if proxy else ""
                detail = (
                    f"ctr image pull + ctr run {what}{fetched}"
                    if kind == "OCI"
                    else f"Nydus/OCI {ratio:.2f}; ctr-remote rpull + ctr run{fetched}"
                )
                rows.append(
                    make_row(row_cls, CASE, f"{CASE} {kind} {net}", kind, st, detail,
                             image=summary, network=net, nydus_over_oci=ratio)
                )  # fmt: skip
    return rows


def register(cases: dict[str, Any], row_cls: type) -> None:
    cases[CASE] = _guarded(CASE, case_ctr_run, row_cls)
