"""Run the snapshotter: the gRPC server on containerd's proxy-plugin socket, the metadata store
and the nydusd manager, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc

from nydus.errors import ConfigError
from nydus.snapshotter.config import SnapshotterConfig
from nydus.snapshotter.daemons import DaemonManager
from nydus.snapshotter.service import add_snapshots_service
from nydus.snapshotter.snapshotter import Snapshotter

__all__ = ["Server", "serve"]

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 << 20  # containerd's default gRPC message limit


class Server:
    """A started snapshotter; `stop()` ends it (the nydusd daemons keep running unless
    `cleanup_on_close`, so containers survive a snapshotter restart)."""

    def __init__(self, cfg: SnapshotterConfig) -> None:
        self.cfg = cfg = cfg.validated()
        Path(cfg.root).mkdir(parents=True, exist_ok=True)
        self.manager = DaemonManager(cfg)
        self.snapshotter = Snapshotter(
            cfg.root, self.manager, volatile=cfg.enable_overlayfs_volatile
        )
        self.manager.open(self.snapshotter.store)
        sock = Path(cfg.address)
        sock.parent.mkdir(parents=True, exist_ok=True)
        if sock.exists() or sock.is_symlink():
            sock.unlink()
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="snapshots"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        add_snapshots_service(self.grpc, self.snapshotter)
        err = "bind failed"
        try:
            bound = self.grpc.add_insecure_port(f"unix://{sock}")
        except RuntimeError as exc:
            bound, err = 0, str(exc)
        if not bound:
            self.manager.close(stop_daemons=False)
            raise ConfigError(f"cannot listen on {sock}: {err}")
        self.grpc.start()
        os.chmod(sock, 0o660)
        log.info("containerd-nydus-grpc serving on %s (root %s, daemon mode %s)",
                 sock, cfg.root, cfg.daemon_mode)  # fmt: skip

    def stop(self) -> None:
        self.grpc.stop(grace=5).wait()
        self.manager.close(stop_daemons=self.cfg.cleanup_on_close)
        self.snapshotter.close()
        try:
            os.unlink(self.cfg.address)
        except OSError:
            pass
        log.info("containerd-nydus-grpc stopped")


def serve(cfg: SnapshotterConfig) -> int:
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received signal %d, stopping", signum)
        done.set()

    server = Server(cfg)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not done.wait(3600):
            pass
    finally:
        server.stop()
    return 0
