"""`containerd-nydus-grpc`: the containerd remote snapshotter for Nydus images
(interfaces.md §7.1). Flags override the TOML `--config`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from nydus import __version__
from nydus.cli.common import run_main, setup_logging
from nydus.errors import ConfigError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="containerd-nydus-grpc",
        description="containerd snapshotter (proxy plugin) that runs Nydus images with nydusd.",
    )
    p.add_argument("--version", action="version", version=f"containerd-nydus-grpc {__version__}")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--root", help="state directory (snapshots, cache, sockets, metadata)")
    p.add_argument("--address", help="gRPC unix socket containerd connects to")
    p.add_argument("--nydusd", help="nydusd binary (default: beside this program, else PATH)")
    p.add_argument("--nydus-image", help="nydus-image binary (accepted; not needed)")
    p.add_argument("--nydusd-config", help="nydusd v1 JSON config template")
    p.add_argument(
        "--daemon-mode", choices=("dedicated", "multiple", "shared"), help="default dedicated"
    )
    p.add_argument("--fs-driver", choices=("fusedev",), help="default fusedev")
    p.add_argument("--recover-policy", choices=("none", "restart"), help="default restart")
    p.add_argument(
        "--log-level", choices=("trace", "debug", "info", "warn", "error"), help="default info"
    )
    p.add_argument("--log-to-stdout", action="store_true", default=None, help="log to stdout")
    return p


def _run(argv: Sequence[str] | None) -> int:
    from nydus.snapshotter.config import SnapshotterConfig, load_toml
    from nydus.snapshotter.server import serve

    args = _parser().parse_args(argv)
    cfg = load_toml(args.config) if args.config else SnapshotterConfig()
    flags = {
        "root": args.root,
        "address": args.address,
        "nydusd_path": args.nydusd,
        "nydus_image_path": args.nydus_image,
        "nydusd_config": args.nydusd_config,
        "daemon_mode": args.daemon_mode,
        "fs_driver": args.fs_driver,
        "recover_policy": args.recover_policy,
        "log_level": args.log_level,
        "log_to_stdout": args.log_to_stdout,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    setup_logging(cfg.log_level, sys.stdout if cfg.log_to_stdout else None)
    for noisy in ("grpc", "httpx", "httpcore"):  # per-request lines of the nydusd API client
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return serve(cfg.validated())


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging("info")
    return run_main(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
