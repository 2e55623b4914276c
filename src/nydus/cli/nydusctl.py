"""`nydusctl`: a small client of the nydusd API (interfaces.md §5).

nydusctl --sock SOCK [--raw] info | set log-level LEVEL
                            | metrics backend | metrics cache | metrics fsstats
                            | metrics pattern [--output FILE [--format list|json]]
                            | mount -s BOOTSTRAP -c CONFIG -m /ID [-t rafs] | umount -m /ID
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import quote

from nydus.cli.common import run_main, setup_logging
from nydus.daemon.client import ApiClient
from nydus.errors import ConfigError

__all__ = ["main"]

BLOCK_BUCKETS = ("<1K", "1K~", "4K~", "16K~", "64K~", "128K~", "512K~", "1M~")
FS_LAT = ("<=200us", "<=1ms", "<=20ms", "<=50ms", "<=500ms", "<=1s", "<=2s", ">2s")
FOPS = (
    "getattr",
    "readlink",
    "open",
    "release",
    "read",
    "statfs",
    "getxattr",
    "listxattr",
    "opendir",
    "lookup",
    "readdir",
    "readdirplus",
    "access",
    "forget",
    "batch_forget",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nydusctl", description="Query and control a running nydusd.")
    p.add_argument("-S", "--sock", required=True, help="nydusd API socket")
    p.add_argument("-r", "--raw", action="store_true", help="print the JSON as received")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    sub.add_parser("info", help="daemon information")
    s = sub.add_parser("set", help="change a daemon setting")
    s.add_argument("key", choices=("log-level",))
    s.add_argument("value")
    m = sub.add_parser("metrics", help="metrics")
    m.add_argument("kind", nargs="?", choices=("backend", "cache", "fsstats", "pattern"))
    m.add_argument(
        "--pattern", action="store_true", help="the access pattern (same as `metrics pattern`)"
    )
    m.add_argument(
        "-o",
        "--output",
        help="with pattern: write the files read, in first-access order, as a prefetch list",
    )
    m.add_argument(
        "--format",
        choices=("list", "json"),
        default="list",
        help="prefetch list format: one path per line (list) or upstream's JSON with ranges",
    )
    m.add_argument("-I", "--interval", type=float, help="(not supported; prints once)")
    mo = sub.add_parser("mount", help="attach an image to a daemon at /<id> (API mounts)")
    mo.add_argument("-s", "--source", required=True, help="bootstrap file")
    mo.add_argument("-c", "--config", required=True, help="nydusd config file for this image")
    mo.add_argument("-m", "--mountpoint", required=True, help="/<id> inside the daemon's mount")
    mo.add_argument("-t", "--type", default="rafs", choices=("rafs", "passthrough_fs"))
    um = sub.add_parser("umount", help="detach the image at /<id>")
    um.add_argument("-m", "--mountpoint", required=True, help="/<id> inside the daemon's mount")
    return p


def _print_info(d: dict[str, Any]) -> None:
    v = d.get("version", {})
    print(f"Version:  \t{v.get('package_ver')}")
    print(f"Status:   \t{d.get('state')}")
    print(f"Profile:  \t{v.get('profile')}")
    print(f"Commit:   \t{v.get('git_commit')}")
    for mp, inst in (d.get("backend_collection") or {}).items():
        cfg = inst.get("config") or {}
        rafs = cfg.get("rafs") or {}
        pf = rafs.get("prefetch") or {}
        print(f"Instance Mountpoint:\t{mp}")
        print(f"  Type:        \t{inst.get('backend_type')}")
        print(f"  Mounted Time:\t{inst.get('mounted_time')}")
        print(f"  Mode:        \t{rafs.get('mode')}")
        print(f"  Prefetch:    \t{pf.get('enable')}")
        print(f"  Merging Size:\t{pf.get('batch_size')}")


def _print_backend(d: dict[str, Any]) -> None:
    count = d.get("read_count") or 0
    amount = d.get("read_amount_total") or 0
    lat = d.get("read_cumulative_latency_millis_total") or 0
    print(f"Backend Type:      \t{d.get('backend_type')}")
    print(f"Read Count:        \t{count}")
    print(f"Read Errors:       \t{d.get('read_errors')}")
    print(f"Read Amount:       \t{amount} bytes")
    print(f"Avg IO Size:       \t{amount // count if count else 0} bytes")
    print(f"Avg Read Latency:  \t{lat / count if count else 0:.2f} ms")
    for name, n in zip(BLOCK_BUCKETS, d.get("read_count_block_size_dist") or [], strict=False):
        print(f"  {name:>6}: {n}")


def _print_cache(d: dict[str, Any]) -> None:
    for key in (
        "partial_hits",
        "whole_hits",
        "total",
        "entries_count",
        "prefetch_data_amount",
        "prefetch_requests_count",
        "prefetch_workers",
        "prefetch_unmerged_chunks",
        "prefetch_cumulative_time_millis",
        "prefetch_served_reads",
        "prefetch_served_chunks",
        "data_all_ready",
        "store_path",
    ):
        print(f"{key:32}\t{d.get(key)}")


def _print_fsstats(d: dict[str, Any]) -> None:
    print(f"Data Read:   \t{d.get('data_read')} bytes")
    print(f"Open Files:  \t{d.get('nr_opens')}")
    for name, hits, errs in zip(
        FOPS, d.get("fop_hits") or [], d.get("fop_errors") or [], strict=False
    ):
        print(f"  {name:13} hits {hits:<10} errors {errs}")
    print("Read latency:")
    for name, n in zip(FS_LAT, d.get("read_latency_dist") or [], strict=False):
        print(f"  {name:>8}: {n}")


def _print_pattern(d: Any) -> None:
    print(f"{'inode':>10}  {'reads':>8}  first access")
    for r in d:
        t = r.get("first_access_time_secs", 0) + r.get("first_access_time_nanos", 0) / 1e9
        print(f"{r.get('ino'):>10}  {r.get('nr_read'):>8}  {t:.6f}")


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    client = ApiClient(args.sock)
    try:
        if args.cmd == "info":
            data = client.call("GET", "v1/daemon")
            printer = _print_info
        elif args.cmd == "set":
            client.call("PUT", "v1/daemon", {"log_level": args.value})
            return 0
        elif args.cmd == "mount":
            try:
                with open(args.config, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read config {args.config}: {exc}") from exc
            body = {"source": os.path.abspath(args.source), "fs_type": args.type, "config": text}
            client.call("POST", f"v1/mount?mountpoint={quote(args.mountpoint)}", body)
            return 0
        elif args.cmd == "umount":
            client.call("DELETE", f"v1/mount?mountpoint={quote(args.mountpoint)}")
            return 0
        elif args.pattern or args.kind == "pattern":
            if args.output:
                from nydus.builder.output import write_atomic
                from nydus.fs.pattern import format_prefetch_list

                doc = client.call("GET", "v1/metrics/pattern/files")
                text = format_prefetch_list(doc, args.format)
                write_atomic(args.output, os.fsencode(text))
                print(f"{len(doc.get('files') or [])} files written to {args.output}")
                return 0
            data = client.call("GET", "v1/metrics/pattern")
            printer = _print_pattern
        elif args.kind is None:
            raise ConfigError("nydusctl metrics: give a kind (backend, cache, fsstats, pattern)")
        else:
            path = {
                "backend": "v1/metrics/backend",
                "cache": "v1/metrics/blobcache",
                "fsstats": "v1/metrics",
            }[args.kind]
            data = client.call("GET", path)
            printer = {"backend": _print_backend, "cache": _print_cache, "fsstats": _print_fsstats}[
                args.kind
            ]
        if args.raw:
            print(json.dumps(data))
        else:
            printer(data)
        return 0
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging("info")
    return run_main(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
