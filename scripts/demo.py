#!/usr/bin/env python3
"""The main job: convert an OCI image in a local registry to Nydus and run from it lazily.

1. start Debian's docker-registry on a free loopback port;
2. make a source image: a rootfs built from this machine's own /usr/bin and /usr/lib files
   (or a Debian minbase with --debian, via mmdebstrap), in three layers, pushed with skopeo;
3. `nydusify convert` it to `<image>:nydus` in the same registry;
4. mount it with `nydusd` from the registry (the seed tutorial's registry.json);
5. `ls` the mount, `cat /etc/bash.bashrc`, and print how many bytes were fetched against
   the image's size.
Run as root from the repository root: `.venv/bin/python scripts/demo.py`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

from tests.registry_fixture import start_registry  # noqa: E402

BASHRC = b"""# System-wide .bashrc file for interactive bash(1) shells.

# To enable the settings / commands in this file for login shells as well,
# this file has to be sourced in /etc/profile.

# If not running interactively, don't do anything
[ -z "$PS1" ] && return

# check the window size after each command and, if necessary,
# update the values of LINES and COLUMNS.
shopt -s checkwinsize
"""


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def layer_from_dir(root: Path) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=6, mtime=0), "sha256:" + hashlib.sha256(
        data
    ).hexdigest()


def generated_layers(work: Path) -> list[Path]:
    """Three layers: a base of host binaries and libraries, config files, an update."""
    base, etc, upd = work / "l1", work / "l2", work / "l3"
    for d in (base, etc, upd):
        d.mkdir(parents=True)
    budget = 120 << 20
    for src_dir in ("/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share/perl5"):
        for p in sorted(Path(src_dir).rglob("*")):
            if budget <= 0:
                break
            if p.is_file() and not p.is_symlink():
                dest = base / str(p).lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dest)
                budget -= p.stat().st_size
    for d in ("bin", "lib", "sbin"):
        os.symlink(f"usr/{d}", base / d) if not (base / d).exists() else None
    (etc / "etc").mkdir()
    (etc / "etc" / "bash.bashrc").write_bytes(BASHRC)
    (etc / "etc" / "hostname").write_text("nydus-demo\n")
    (etc / "etc" / "os-release").write_text('NAME="nydus-py demo"\nID=demo\n')
    (upd / "etc").mkdir()
    (upd / "etc" / ".wh.hostname").write_bytes(b"")
    (upd / "etc" / "motd").write_text("Welcome to a lazily loaded Nydus image.\n")
    return [base, etc, upd]


def debian_layers(work: Path) -> list[Path]:
    root = work / "debian"
    subprocess.run(["mmdebstrap", "--variant=minbase", "bookworm", str(root)], check=True)
    return [root]


def push_image(layers: list[Path], work: Path, ref: str) -> int:
    blobs = work / "layout" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs, diff_ids, total = [], [], 0
    for d in layers:
        gz, diff_id = layer_from_dir(d)
        digest = hashlib.sha256(gz).hexdigest()
        (blobs / digest).write_bytes(gz)
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + digest,
                "size": len(gz),
            }
        )
        diff_ids.append(diff_id)
        total += len(gz)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/bash"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    (blobs / hashlib.sha256(config).hexdigest()).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    (blobs / hashlib.sha256(manifest).hexdigest()).write_bytes(manifest)
    (work / "layout" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (work / "layout" / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    }
                ],
            }
        )
    )
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{work / 'layout'}:latest",
            f"docker://{ref}",
        ],
        check=True,
    )
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--debian", action="store_true", help="use a Debian minbase (mmdebstrap)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the demo mounts FUSE filesystems: run it as root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="nydus-demo-"))
    reg = None
    nydusd = None
    mnt = work / "mnt"
    try:
        step("starting a local registry (Debian docker-registry)")
        reg = start_registry(work / "registry")
        print(f"registry at {reg.host}")
        step("making the source image and pushing it with skopeo")
        layers = debian_layers(work) if args.debian else generated_layers(work / "src")
        source = f"{reg.host}/demo:latest"
        size = push_image(layers, work, source)
        print(f"pushed {source}: {len(layers)} layers, {size / 1e6:.1f} MB compressed")
        step("nydusify convert")
        t0 = time.monotonic()
        subprocess.run(
            [
                str(BIN / "nydusify"),
                "convert",
                "--source",
                source,
                "--target",
                f"{reg.host}/demo:nydus",
                "--source-insecure",
                "--target-insecure",
                "--work-dir",
                str(work / "tmp"),
            ],
            check=True,
        )
        print(f"converted in {time.monotonic() - t0:.1f} s")
        boot = work / "tmp" / f"{reg.host}" / "demo:nydus" / "bootstrap"
        subprocess.run(
            [str(BIN / "nydus-image"), "check", "--bootstrap", str(boot), "--log-level", "warn"],
            check=True,
        )
        step("nydusd --config registry.json --mountpoint mnt --bootstrap .../bootstrap")
        cfg = work / "registry.json"
        cfg.write_text(
            json.dumps(
                {
                    "device": {
                        "backend": {
                            "type": "registry",
                            "config": {"scheme": "http", "host": reg.host, "repo": "demo"},
                        }
                    },
                    "mode": "direct",
                    "digest_validate": True,
                },
                indent=2,
            )
        )
        mnt.mkdir()
        sock = work / "api.sock"
        nydusd = subprocess.Popen(
            [
                str(BIN / "nydusd"),
                "--config",
                str(cfg),
                "--mountpoint",
                str(mnt),
                "--bootstrap",
                str(boot),
                "--apisock",
                str(sock),
                "--log-level",
                "info",
            ]
        )
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            if nydusd.poll() is not None:
                raise SystemExit("nydusd exited")
            time.sleep(0.1)
        step("ls ./mnt; cat ./mnt/etc/bash.bashrc")
        print(" ".join(sorted(os.listdir(mnt))))
        print((mnt / "etc" / "bash.bashrc").read_text())
        import httpx

        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as api:
            m = api.get("http://nydusd/api/v1/metrics/backend").json()
        print(
            f"fetched {m['read_amount_total']} bytes in {m['read_count']} requests for an "
            f"image of {size} bytes ({100 * m['read_amount_total'] / size:.2f}%)"
        )
        return 0
    finally:
        if nydusd is not None:
            nydusd.terminate()
            try:
                nydusd.wait(10)
            except subprocess.TimeoutExpired:
                nydusd.kill()
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)])
        if reg is not None:
            reg.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
