"""One containerd + snapshotter + registry set-up shared by the containerd tests and the `ctr
run` benchmark: a registry with the busybox test image and its Nydus conversion, our
`containerd-nydus-grpc`, and a private containerd whose proxy plugin `nydus` points at it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from nydus.kernel.mounts import mountpoints_under, unmount_all
from tests.registry_fixture import RunningRegistry, start_registry
from tests.snapshotter.client import SnapshotterProcess, start_snapshotter
from tests.snapshotter.containerd import Containerd, missing_tools, push_busybox

NYDUSIFY = str(Path(sys.executable).parent / "nydusify")

# nydusd config template for a plain-HTTP test registry (upstream's --nydusd-config)
TEMPLATE = {
    "device": {
        "backend": {"type": "registry", "config": {"scheme": "http", "timeout": 10,
                                                   "retry_limit": 1}},
        "cache": {"type": "blobcache", "config": {}},
    },
    "mode": "direct",
    "digest_validate": False,
    "enable_xattr": True,
}  # fmt: skip

_ACCESS = re.compile(r'"(GET|HEAD) /v2/([^ ]+)/blobs/(sha256:[0-9a-f]{64}) [^"]*" (\d{3}) (\d+)')


def convert(source: str, target: str, work: Path) -> None:
    done = subprocess.run(
        [NYDUSIFY, "convert", "--source", source, "--target", target, "--source-insecure",
         "--target-insecure", "--work-dir", str(work)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def write_template(path: Path, **backend: object) -> Path:
    doc = json.loads(json.dumps(TEMPLATE))
    doc["device"]["backend"]["config"].update(backend)
    path.write_text(json.dumps(doc))
    return path


def blob_requests(registry: RunningRegistry, since: int = 0) -> list[tuple[str, str, int, int]]:
    """(method, digest, status, bytes) of the blob requests in the registry's access log,
    from byte offset `since` on."""
    out = []
    with open(registry.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        m = _ACCESS.search(line)
        if m:
            out.append((m.group(1), m.group(3), int(m.group(4)), int(m.group(5))))
    return out


def nydus_layers(registry: RunningRegistry, ref: str) -> tuple[list[str], list[str]]:
    """(data blob layer digests, bootstrap layer digests) of a Nydus image's manifest."""
    repo, _, tag = ref.split("/", 1)[1].partition(":")
    r = httpx.get(
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    r.raise_for_status()
    blobs, boots = [], []
    for layer in r.json()["layers"]:
        notes = layer.get("annotations", {})
        if notes.get("containerd.io/snapshot/nydus-blob") == "true":
            blobs.append(layer["digest"])
        elif notes.get("containerd.io/snapshot/nydus-bootstrap") == "true":
            boots.append(layer["digest"])
    return blobs, boots


def nydusd_pids(root: Path) -> list[int]:
    """nydusd processes whose command line points into the snapshotter root `root`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"nydusd") for a in argv[:2]) and any(
            str(root).encode() in a for a in argv
        ):
            try:
                if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            except OSError:
                continue
            pids.append(int(entry))
    return sorted(pids)


def stop_daemons(root: Path) -> None:
    """Test teardown: the nydusd processes a snapshotter under `root` left running (they
    outlive the snapshotter on purpose) and their mounts."""
    for pid in nydusd_pids(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for mp in mountpoints_under(root):
        unmount_all(mp)


@dataclass
class Env:
    workdir: Path
    registry: RunningRegistry
    oci_ref: str
    nydus_ref: str
    snapshotter: SnapshotterProcess
    containerd: Containerd

    @property
    def root(self) -> Path:
        return self.snapshotter.root

    def ctr(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.containerd.ctr(*args, **kw)  # type: ignore[arg-type]

    def rpull(self, ref: str) -> None:
        self.ctr("image", "rpull", "--plain-http", "--snapshotter", "nydus", ref, tool="ctr-remote")

    def run(self, ref: str, name: str, *cmd: str) -> str:
        return self.ctr("run", "--rm", "--snapshotter", "nydus", ref, name, *cmd).stdout

    def snapshots(self) -> list[list[str]]:
        out = self.ctr("snapshots", "--snapshotter", "nydus", "ls").stdout.splitlines()[1:]
        return [line.split() for line in out]

    def restart_snapshotter(self, timeout: float = 60) -> None:
        """Stop and start our snapshotter; return once containerd reaches it again (its gRPC
        client fails calls fast while it backs off between reconnects)."""
        assert self.snapshotter.stop() == 0
        self.snapshotter.start()
        deadline = time.monotonic() + timeout
        while self.ctr("snapshots", "--snapshotter", "nydus", "ls", check=False).returncode:
            if time.monotonic() > deadline:
                raise AssertionError("containerd did not reconnect to the snapshotter")
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            self.containerd.stop()
        finally:
            try:
                self.snapshotter.stop()
            finally:
                try:
                    stop_daemons(self.root)
                finally:
                    self.registry.stop()


def require_containerd() -> None:
    """The containerd tests fail (not skip) without their tools: CI installs them."""
    import pytest

    if os.geteuid() != 0:
        pytest.fail("the containerd tests need root")
    missing = missing_tools()
    if missing:
        pytest.fail(f"the containerd tests need {', '.join(missing)} (scripts/install.sh)")


def start_env(workdir: Path, *snapshotter_args: str, repo: str = "busybox") -> Env:
    workdir.mkdir(parents=True, exist_ok=True)
    registry = start_registry(workdir / "registry", accesslog=True)
    try:
        oci = push_busybox(workdir / "image", registry.host, repo)
        nydus = oci + "-nydus"
        convert(oci, nydus, workdir / "convert")
        tpl = write_template(workdir / "nydusd-config.json")
        sn = start_snapshotter(workdir / "sn", "--nydusd-config", str(tpl), *snapshotter_args)
    except BaseException:
        registry.stop()
        raise
    ctd = Containerd(workdir / "ctd", sn.sock)
    env = Env(workdir, registry, oci, nydus, sn, ctd)
    try:
        ctd.start()
    except BaseException:
        env.stop()
        raise
    return env
