"""A private containerd for tests and benchmarks: Debian's `containerd` as root with its own
config, root, state dir and socket (never the system's), and the proxy snapshot plugin `nydus`
pointing at our snapshotter's socket; `ctr`/`ctr-remote` run against it.

Images for it: a tiny OCI image made of the static busybox (`/bin/sh`, `cat`...) and an
`/etc/os-release`, pushed to a test registry with skopeo.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.converter.images import Layout, make_image, push
from tests.helpers.layers import D, F, L, Member

CONTAINERD = "/usr/bin/containerd"
TOOLS = ("containerd", "ctr", "ctr-remote", "runc")
BUSYBOX = "/bin/busybox"
NAMESPACE = "nydus-test"
OS_RELEASE = b'PRETTY_NAME="nydus-py test image"\nNAME="nydus-test"\nID=nydustest\n'
BIG_DATA = bytes(range(256)) * 4096 * 8  # /data/big, 8 MiB


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path(BUSYBOX).exists():
        missing.append(BUSYBOX + " (busybox-static)")
    return missing


@dataclass
class Containerd:
    workdir: Path
    snapshotter_sock: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    address: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "containerd.log"
        self.address = self.workdir / "containerd.sock"

    def config(self) -> str:
        w = self.workdir
        return "\n".join([
            "version = 2",
            f'root = "{w / "root"}"',
            f'state = "{w / "state"}"',
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\", "
            "\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", "
            "\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.devmapper\"]",
            "[grpc]",
            f'  address = "{self.address}"',
            "[ttrpc]",
            f'  address = "{self.address}.ttrpc"',
            "[debug]",
            '  address = ""',
            '  level = "info"',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{w / "opt"}"',
            "[proxy_plugins.nydus]",
            '  type = "snapshot"',
            f'  address = "{self.snapshotter_sock}"',
            "",
        ])  # fmt: skip

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.toml"
        cfg.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(cfg)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("containerd exited:\n" + self.log())
            if self.address.exists() and self.ctr("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("containerd did not start:\n" + self.log())
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def ctr(
        self,
        *args: str,
        tool: str = "ctr",
        check: bool = True,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [tool, "--address", str(self.address), "--namespace", NAMESPACE, *args]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    def remove_all(self) -> None:
        """Containers, tasks and images of our namespace (so containerd's GC drops their
        snapshots), best effort."""
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", c, check=False)
            self.ctr("tasks", "delete", "-f", c, check=False)
            self.ctr("containers", "delete", c, check=False)
        for img in self.ctr("images", "ls", "-q", check=False).stdout.split():
            self.ctr("images", "rm", "--sync", img, check=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.remove_all()
        finally:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def busybox_layers(extra: list[Member] | None = None) -> list[list[Member]]:
    """Layer 1: busybox and its applet links; layer 2: /etc/os-release and a data file."""
    applets = ("sh", "cat", "ls", "echo", "sleep", "test", "sha256sum", "wc", "head")
    base = [
        D("bin"),
        F("bin/busybox", Path(BUSYBOX).read_bytes(), mode=0o755),
        *(L(f"bin/{a}", "busybox") for a in applets),
        D("tmp", mode=0o1777),
        D("proc"),
        D("sys"),
        D("dev"),
        D("etc"),
    ]
    top = [
        D("etc"),
        F("etc/os-release", OS_RELEASE),
        D("data"),
        F("data/big", BIG_DATA, mode=0o644),
        *(extra or []),
    ]
    return [base, top]


def push_busybox(workdir: Path, registry_host: str, repo: str, tag: str = "v1") -> str:
    layout = Layout(workdir / "layout")
    layout.add_image(tag, make_image(busybox_layers(), env=("PATH=/bin",)))
    ref = f"{registry_host}/{repo}:{tag}"
    push(layout, tag, ref)
    return ref
