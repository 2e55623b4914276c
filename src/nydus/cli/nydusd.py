"""`nydusd`: mount a RAFS image with FUSE and serve its API (interfaces.md §4.1).

nydusd [fuse] --config FILE --mountpoint DIR --bootstrap FILE [--apisock SOCK]
       [--log-level info] [--thread-num N] [--id ID --supervisor SOCK]
       [--prefetch-files FILE] [--virtual-mountpoint /] [-D DIR]
nydusd [fuse] --mountpoint DIR --apisock SOCK   (no image: API mounts at /<id>)
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from nydus import __version__
from nydus.cli.common import RustStyleFormatter, run_main, setup_logging
from nydus.errors import ConfigError

if TYPE_CHECKING:
    from nydus.config import NydusdConfig

log = logging.getLogger("nydus.nydusd")

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one ERROR log line (exit 1), like every other failure."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count {text!r}") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"thread count {n} must be 1..1024")
    return n


def _add_fuse_flags(p: argparse.ArgumentParser, top: bool) -> None:
    d = argparse.SUPPRESS if top else None
    p.add_argument("-M", "--mountpoint", default=d, help="FUSE mount target")
    p.add_argument("-B", "--bootstrap", default=d, help="RAFS bootstrap to mount at /")
    p.add_argument(
        "-D",
        "--localfs-dir",
        default=d,
        help="localfs backend and blob cache in this directory (instead of --config)",
    )
    p.add_argument("-s", "--shared-dir", default=d, help="(passthroughfs: not supported)")
    p.add_argument(
        "--prefetch-files",
        default=d,
        help="file listing paths (one per line) to prefetch into the cache",
    )
    p.add_argument("-m", "--virtual-mountpoint", default=d, help="sub-path (only / supported)")
    p.add_argument(
        "--fuse-threads",
        "--thread-num",
        dest="threads",
        type=_threads,
        default=d,
        help="worker threads for file reads (1..1024, default 4)",
    )
    p.add_argument(
        "--failover-policy",
        default=d,
        choices=("none", "resend", "flush"),
        help="(accepted for compatibility)",
    )
    p.add_argument(
        "--fs-driver",
        default=d,
        choices=("fuse", "erofs"),
        help="fuse: our FUSE server answers everything (default); erofs: the kernel's EROFS "
        "mounts the bootstrap and the daemon serves the blobs (config: fs_driver)",
    )
    p.add_argument(
        "--erofs-mount",
        default=d,
        choices=("auto", "file", "loop"),
        help="erofs driver: file-backed mount, loop devices, or auto (file-backed where the "
        "kernel supports it; config: erofs_mount)",
    )
    p.add_argument(
        "--work-dir",
        default=d,
        help="erofs driver: where the private blob mount lives (default: the blob cache "
        "work_dir, else /run/nydusd)",
    )
    p.add_argument("--writable", action="store_true", default=d, help="(not supported)")
    p.add_argument("--upgrade", action="store_true", default=d, help="(not supported)")


def _add_global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    d = argparse.SUPPRESS if top else None
    p.add_argument("-A", "--apisock", default=d, help="HTTP API unix socket")
    p.add_argument("-C", "--config", default=d, help="config file: v1 JSON, v2 JSON or TOML")
    p.add_argument("--id", default=d, help="daemon id (needs --supervisor)")
    p.add_argument("--supervisor", default=d, help="supervisor socket (needs --id)")
    p.add_argument(
        "-l",
        "--log-level",
        default=d,
        choices=("trace", "debug", "info", "warn", "error"),
        help="default info",
    )
    p.add_argument("-L", "--log-file", default=d, help="log to this file instead of stderr")
    p.add_argument("--log-rotation-size", default=d, help="(accepted for compatibility)")
    p.add_argument(
        "--rlimit-nofile",
        type=int,
        default=d,
        help="raise the open-file limit (default 1000000, 0 leaves it)",
    )
    p.add_argument("--backend-source", default=d, help="(accepted for compatibility)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nydusd", description="Mount a RAFS image (Nydus) with FUSE.")
    p.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"nydusd v{__version__} (nydus-py, Python {sys.version.split()[0]})",
    )
    _add_global_flags(p, top=False)
    _add_fuse_flags(p, top=False)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    f = sub.add_parser("fuse", help="mount with FUSE (the default)")
    _add_global_flags(f, top=True)
    _add_fuse_flags(f, top=True)
    for name in ("virtiofs", "singleton", "nbd", "uffd"):
        s = sub.add_parser(name, help="(not supported)")
        s.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _config(args: argparse.Namespace) -> tuple[NydusdConfig, str]:
    from nydus.config import load_config, localfs_config

    if args.localfs_dir and args.config:
        raise ConfigError("--localfs-dir conflicts with --config")
    if args.localfs_dir:
        cfg = localfs_config(args.localfs_dir)
        text = ""
    elif args.config:
        cfg = load_config(args.config)
        with open(args.config, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    else:
        raise ConfigError("either --config or --localfs-dir is required")
    auth = os.environ.get("IMAGE_PULL_AUTH")
    if auth:
        cfg = cfg.with_registry_auth(auth)
    try:
        cfg.validate()
    except ConfigError as exc:
        where = args.config or args.localfs_dir
        raise ConfigError(f"{where}: {exc}") from None
    return cfg, text


def _prefetch_list(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return tuple(line.strip() for line in f if line.strip())
    except OSError as exc:
        raise ConfigError(f"cannot read prefetch list {path}: {exc.strerror}") from exc


def _log_to_file(path: str) -> None:
    if not os.path.splitext(path)[1]:
        path += ".log"
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise ConfigError(f"cannot open log file {path}: {exc.strerror}") from exc
    handler.setFormatter(RustStyleFormatter())
    logging.getLogger().handlers[:] = [handler]


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    from nydus.daemon.lifecycle import run_daemon
    from nydus.daemon.service import DaemonOptions

    if args.cmd not in (None, "fuse"):
        raise ConfigError(f"subcommand {args.cmd!r} is not supported; use `nydusd fuse`")
    setup_logging(args.log_level or "info")
    if args.log_file:
        _log_to_file(args.log_file)
    if args.shared_dir:
        raise ConfigError("--shared-dir (passthroughfs) is not supported")
    if args.writable:
        raise ConfigError("--writable is not supported")
    if args.upgrade:
        raise ConfigError("--upgrade (live takeover) is not supported")
    if bool(args.id) != bool(args.supervisor):
        raise ConfigError("--id and --supervisor must be given together")
    if not args.mountpoint:
        raise ConfigError("--mountpoint is required")
    if args.prefetch_files and not args.bootstrap:
        raise ConfigError("--prefetch-files requires --bootstrap")
    if args.bootstrap and not os.path.exists(args.bootstrap):
        raise ConfigError(f"bootstrap {args.bootstrap} does not exist")
    if not args.bootstrap and not args.apisock:
        raise ConfigError("--bootstrap is required (or --apisock, to mount images through the API)")
    cfg: NydusdConfig | None = None
    text = ""
    if args.bootstrap or args.config or args.localfs_dir:
        cfg, text = _config(args)  # (an API-mounts daemon: each mount brings its own config)
    if not args.bootstrap and args.fs_driver == "erofs":
        raise ConfigError("--fs-driver erofs needs --bootstrap (API mounts use the fuse driver)")
    if cfg is not None and (args.fs_driver or args.erofs_mount):  # the flags win
        import dataclasses

        cfg = dataclasses.replace(
            cfg,
            fs_driver=args.fs_driver or cfg.fs_driver,
            erofs_mount=args.erofs_mount or cfg.erofs_mount,
        )
    limit = 1_000_000 if args.rlimit_nofile is None else args.rlimit_nofile
    if limit:
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = min(limit, hard) if hard != resource.RLIM_INFINITY else limit
            if want > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    opts = DaemonOptions(
        mountpoint=args.mountpoint,
        bootstrap=args.bootstrap or None,
        config=cfg,
        apisock=args.apisock,
        threads=args.threads or 4,
        id=args.id,
        supervisor=args.supervisor,
        prefetch_files=_prefetch_list(args.prefetch_files),
        virtual_mountpoint=args.virtual_mountpoint or "/",
        config_text=text,
        work_dir=args.work_dir,
    )
    rc = run_daemon(opts)
    # everything is unmounted: leave now, even if a worker still waits on a stalled backend
    # (exit handlers would join such threads)
    logging.shutdown()
    os._exit(rc)


def main(argv: Sequence[str] | None = None) -> int:
    # errors found while parsing the command line are logged in the same format
    setup_logging("info")
    return run_main(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
