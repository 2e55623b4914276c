"""`nydusify mount`: mount a Nydus image from a registry with our nydusd (FUSE, lazy reads
over the registry backend or a given one) and keep it mounted until interrupted.

The bootstrap comes from the image's bootstrap layer (the Nydus manifest for the platform,
from an index if need be) and is kept under the work directory with the nydusd config;
nydusd runs in the foreground, so Ctrl+C (SIGINT to the process group) or SIGTERM to
nydusify stops it, and nydusify makes sure the mount point is unmounted before it exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from nydus.converter.bootstrap_layer import read_bootstrap_layer
from nydus.converter.check import fetch_image, registry_backend
from nydus.daemon.process import NydusdCommand, StartError, find_nydusd, start_nydusd
from nydus.errors import FormatError, NydusError
from nydus.kernel.mounts import is_mounted
from nydus.oci.manifest import Platform, host_platform
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

__all__ = ["MountError", "MountOptions", "mount_image"]

log = logging.getLogger("nydus.converter")


class MountError(NydusError):
    pass


@dataclass
class MountOptions:
    target: str
    mount_path: str = "./image-fs"
    target_insecure: bool = False
    platform: str | None = None
    work_dir: str = "./tmp"
    nydusd: str | None = None
    prefetch: bool = False
    backend_type: str | None = None  # None: the registry the image is in
    backend_config: dict[str, Any] | None = None
    mount_timeout: float = 60.0


def fetch_bootstrap(o: MountOptions, out: Path) -> tuple[RegistryClient, Reference]:
    """Write the image's bootstrap to `out`; return the client (caller closes) and ref."""
    ref = Reference.parse(o.target)
    platform = Platform.parse(o.platform) if o.platform else host_platform()
    client = RegistryClient.for_reference(ref, skip_verify=o.target_insecure)
    try:
        image = fetch_image(client, ref, platform, nydus=True, multi=False)
        layer = image.manifest.layers[-1]
        log.info("Pulling Nydus bootstrap %s", layer.digest)
        try:
            boot = read_bootstrap_layer(client.read_blob(ref.repo, layer.digest))
        except FormatError as exc:
            raise MountError(f"bootstrap layer {layer.digest} of {o.target}: {exc}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(boot)
    except BaseException:
        client.close()
        raise
    return client, ref


def mount_image(o: MountOptions) -> int:
    """Mount and serve until nydusd ends (a signal or an external unmount); nydusd's exit
    code."""
    mnt = Path(o.mount_path).absolute()
    if is_mounted(mnt):
        raise MountError(f"{mnt} is already a mount point")
    work = Path(o.work_dir) / "nydusify-mount"
    boot = work / "image.boot"
    client, ref = fetch_bootstrap(o, boot)
    try:
        if o.backend_type:
            backend = {"type": o.backend_type, "config": o.backend_config or {}}
        else:
            backend = {
                "type": "registry",
                "config": registry_backend(client, ref, o.target_insecure),
            }
    finally:
        client.close()
    cfg: dict[str, Any] = {
        "device": {"backend": backend},
        "mode": "direct",
        "digest_validate": True,
        "enable_xattr": True,
    }
    if o.prefetch:
        cfg["fs_prefetch"] = {"enable": True, "threads_count": 4}
    config = work / "nydusd-config.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold credentials
    with open(fd, "w") as f:
        json.dump(cfg, f)
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        binary = find_nydusd(o.nydusd)
    except StartError:
        config.unlink(missing_ok=True)
        raise MountError("nydusd not found (give --nydusd)") from None
    command = NydusdCommand(mnt, boot, config=config, log_level="info", binary=binary)
    log.info("Mounting Nydus image %s to %s", o.target, mnt)
    try:
        daemon = start_nydusd(command, None, wait=False)  # its log goes to our stderr
    except StartError as exc:
        config.unlink(missing_ok=True)
        raise MountError(str(exc)) from None

    def forward(signum: int, _frame: FrameType | None) -> None:
        if daemon.alive():
            daemon.proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            daemon.wait_running(o.mount_timeout, poll_interval=0.05)
        except StartError as exc:
            raise MountError(str(exc)) from None
        log.info("Mounted Nydus image %s at %s; interrupt (Ctrl+C) to unmount", o.target, mnt)
        while True:
            try:
                return daemon.proc.wait()
            except InterruptedError:
                continue
    finally:
        daemon.stop()  # SIGTERM, then SIGKILL; what is left mounted is unmounted
        for s, h in old.items():
            signal.signal(s, h)
        config.unlink(missing_ok=True)
        log.info("Unmounted %s", mnt)
