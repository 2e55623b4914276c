"""Record what a workload reads: mount the source image lazily from the registry with nydusd
(`access_pattern` on), run the command in a chroot over an overlay of the mount (with /proc
and /dev, the image config's environment and working directory, a time limit), and take the
files read, in first-access order, from the daemon's API.

A workload that overruns its time limit is stopped and what it read until then is used (a
server never exits by itself); one that fails is reported and its reads are used too.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nydus.daemon.process import NydusdCommand, StartError, start_nydusd
from nydus.errors import NydusError
from nydus.fs.pattern import format_prefetch_list
from nydus.kernel.mounts import unmount_all
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

if TYPE_CHECKING:
    from nydus.converter.optimize import OptimizeOptions

__all__ = ["WorkloadError", "chroot_overlay", "record_workload", "run_in_chroot"]

log = logging.getLogger("nydus.converter")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class WorkloadError(NydusError):
    pass


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        raise WorkloadError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.returncode}")


def _umount(path: Path) -> None:
    if not unmount_all(path):
        log.warning("could not unmount %s", path)


@contextmanager
def chroot_overlay(lower: Path, base: Path, with_sys: bool = True) -> Iterator[Path]:
    """A writable overlayfs over `lower` (upper and work dirs under `base`) with /proc and a
    bind of /dev mounted in it (`with_sys`); everything is unmounted on the way out."""
    upper, work, merged = base / "upper", base / "work", base / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        _run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            str(merged),
        )
        stack.callback(_umount, merged)
        for sub, args in (("proc", ("-t", "proc", "proc")), ("dev", ("--bind", "/dev"))):
            if not with_sys:
                break
            (merged / sub).mkdir(exist_ok=True)
            _run("mount", *args, str(merged / sub))
            stack.callback(_umount, merged / sub)
        yield merged


def run_in_chroot(
    root: Path, argv: list[str], env: dict[str, str], cwd: str, timeout: float
) -> int | None:
    """Run `argv` chrooted in `root`; its exit status, or None when the time limit stopped
    it. The whole process group is killed at the end either way."""

    def enter() -> None:  # in the child, before exec: PATH is searched inside the chroot
        os.chroot(root)
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")

    try:
        p = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=enter,  # noqa: PLW1509 - chroot needs it; no threads touch the child
        )
    except OSError as exc:
        raise WorkloadError(f"cannot run the workload {argv[0]!r}: {exc.strerror}") from exc
    try:
        out, _ = p.communicate(timeout=timeout)
        status: int | None = p.returncode
    except subprocess.TimeoutExpired:
        status = None
        out = b""
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    tail = out.decode(errors="replace").strip().splitlines()[-5:]
    for line in tail:
        log.debug("workload: %s", line)
    if status:
        log.warning("workload exited with status %d%s", status, f": {tail[-1]}" if tail else "")
    return status


def _environment(config: dict[str, Any]) -> tuple[dict[str, str], str]:
    c = config.get("config") or {}
    env = {"PATH": DEFAULT_PATH, "HOME": "/root"}
    for item in c.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            k, v = item.split("=", 1)
            env[k] = v
    cwd = c.get("WorkingDir") or "/"
    return env, cwd if isinstance(cwd, str) else "/"


def record_workload(o: OptimizeOptions, sref: Reference, bootstrap: Path, work: Path) -> str:
    """Run `o.workload` over a lazy mount of the source image; the prefetch list it yields."""
    from nydus.converter.check import fetch_image, registry_backend
    from nydus.oci.manifest import Platform, host_platform

    assert o.workload is not None
    try:
        argv = shlex.split(o.workload)
    except ValueError as exc:
        raise WorkloadError(f"--workload {o.workload!r}: {exc}") from None
    if not argv:
        raise WorkloadError("--workload is empty")
    if os.geteuid() != 0:
        raise WorkloadError("--workload needs root (FUSE, overlayfs and chroot)")
    client = RegistryClient.for_reference(sref, skip_verify=o.source_insecure)
    try:
        platform = Platform.parse(o.platform) if o.platform else host_platform()
        image = fetch_image(client, sref, platform, nydus=True, multi=False)
        backend = registry_backend(client, sref, o.source_insecure)
    finally:
        client.close()
    env, cwd = _environment(image.config)
    fs_dir = work / "workload"
    mnt = fs_dir / "mnt"
    mnt.mkdir(parents=True)
    config = fs_dir / "nydusd.json"
    cfg = {
        "device": {"backend": {"type": "registry", "config": backend}},
        "mode": "direct",
        "enable_xattr": True,
        "access_pattern": True,
    }
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold credentials
    with open(fd, "w") as f:
        json.dump(cfg, f)
    # a unix socket path must stay short (108 bytes): keep it out of the work dir
    sock_dir = Path(tempfile.mkdtemp(prefix="nydusify-"))
    command = NydusdCommand(
        mnt, bootstrap, sock_dir / "api.sock", config=config, log_level="warn", binary=o.nydusd
    )
    try:
        try:
            daemon = start_nydusd(command, fs_dir / "nydusd.log", timeout=o.mount_timeout)
        except StartError as exc:
            raise WorkloadError(f"cannot mount the source image: {exc}") from None
        with daemon:
            log.info("Running workload %s (time limit %.0f s)", o.workload, o.workload_timeout)
            t0 = time.monotonic()
            with chroot_overlay(mnt, fs_dir / "overlay") as root:
                status = run_in_chroot(root, argv, env, cwd, o.workload_timeout)
            secs = time.monotonic() - t0
            if status is None:
                log.warning(
                    "workload stopped at its time limit of %.0f s; using what it read so far",
                    o.workload_timeout,
                )
            try:
                doc = daemon.client.call("GET", "v1/metrics/pattern/files")
            except NydusError as exc:
                raise WorkloadError(f"cannot read the access pattern from nydusd: {exc}") from None
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    if not isinstance(doc, dict):
        raise WorkloadError("nydusd's access pattern is not a JSON object")
    listing = format_prefetch_list(doc)
    n = listing.count("\n")
    log.info("Workload read %d files in %.1f s", n, secs)
    if n == 0:
        raise WorkloadError(f"the workload {o.workload!r} read no file of the image")
    return listing
