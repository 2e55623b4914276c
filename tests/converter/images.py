"""Source images for the nydusify tests and benchmarks, built with plain code (no `nydus`
import): OCI layouts on disk (single images and multi-arch indexes), pushed into a real
registry with skopeo (OCI, or Docker schema2 with `--format v2s2`).

Layer contents come from `tests.helpers.layers` (PAX tars with whiteouts, opaque dirs, hard
links, symlinks, devices, `SCHILY.xattr.*`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.layers import (
    DEFAULT_MTIME,
    D,
    F,
    H,
    L,
    Member,
    layer_bytes,
    opaque,
    three_layer_members,
    whiteout,
)
from tests.oci.layout import manifest_json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _gzip(data: bytes, level: int) -> bytes:
    # deterministic gzip (mtime 0); zlib directly is faster than gzip.compress for big layers
    co = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = co.compress(data) + co.flush()
    out = out[:4] + b"\0\0\0\0" + out[8:]  # zero the mtime field
    return out


@dataclass
class Image:
    """One image: manifest, config and gzip'ed layers, all as bytes."""

    manifest: bytes
    config: bytes
    layers: list[bytes]
    diff_ids: list[str]
    arch: str = "amd64"

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(b) for b in self.layers]

    @property
    def compressed_size(self) -> int:
        return sum(len(b) for b in self.layers)


def make_image(
    layers: Sequence[Sequence[Member]],
    *,
    arch: str = "amd64",
    level: int = 6,
    env: Sequence[str] = ("PATH=/usr/bin:/bin",),
) -> Image:
    blobs, diff_ids = [], []
    for members in layers:
        tar = layer_bytes(members)
        blobs.append(_gzip(tar, level))
        diff_ids.append(sha256(tar))
    config = json.dumps(
        {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": list(env),
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
                "Labels": {"org.example.test": "nydusify"},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
                for i in range(len(blobs))
            ],
        },
        separators=(",", ":"),
    ).encode()
    return Image(manifest_json(config, blobs), config, blobs, diff_ids, arch)


@dataclass
class Layout:
    """An OCI image layout directory being filled with tagged images and indexes."""

    root: Path
    refs: list[dict] = field(default_factory=list)

    def _blob(self, data: bytes) -> None:
        d = self.root / "blobs" / "sha256"
        d.mkdir(parents=True, exist_ok=True)
        p = d / hashlib.sha256(data).hexdigest()
        if not p.exists():
            p.write_bytes(data)

    def _write_index(self) -> None:
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs})
        )

    def add_image(self, tag: str, image: Image) -> None:
        for data in (image.config, *image.layers, image.manifest):
            self._blob(data)
        self.refs.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        self._write_index()

    def add_index(self, tag: str, images: Sequence[Image]) -> bytes:
        """A multi-arch index (its JSON built here) over `images`, tagged `tag`."""
        entries = []
        for image in images:
            for data in (image.config, *image.layers, image.manifest):
                self._blob(data)
            plat = {"architecture": image.arch, "os": "linux"}
            if image.arch == "arm64":
                plat["variant"] = "v8"
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": len(image.manifest),
                    "platform": plat,
                }
            )
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=2
        ).encode()
        self._blob(index)
        self.refs.append(
            {
                "mediaType": OCI_INDEX,
                "digest": sha256(index),
                "size": len(index),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        self._write_index()
        return index


def skopeo(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def push(
    layout: Layout,
    tag: str,
    dest: str,
    *,
    v2s2: bool = False,
    all_images: bool = False,
    creds: str | None = None,
) -> None:
    """`skopeo copy oci:LAYOUT:TAG docker://DEST` (plain HTTP registry)."""
    args = ["copy", "--dest-tls-verify=false"]
    if v2s2:
        args += ["--format", "v2s2"]
    if all_images:
        args.append("--all")
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, f"oci:{layout.root}:{tag}", f"docker://{dest}")


# -- contents ---------------------------------------------------------------------------------


def rich_layers() -> list[list[Member]]:
    """Three layers with whiteouts, an opaque directory, hard links, symlinks, device nodes,
    a FIFO, non-UTF-8 and long names, big ids and xattrs (`user.*` and
    `security.capability`), plus a 4th layer with more `user.*` xattrs, a hard link to a file
    of the same layer, an opaque marker *after* a same-layer sibling and a whiteout of a whole
    directory that a lower layer filled."""
    base = three_layer_members()
    rng = random.Random(4)
    t = DEFAULT_MTIME + 1000
    layer4 = [
        D("srv", mtime=t),
        F(
            "srv/data.bin",
            rng.randbytes(300_000),
            mode=0o640,
            uid=33,
            gid=33,
            xattrs={"user.checksum": b"abc123", "user.origin": b"layer4"},
            mtime=t + 1,
        ),
        H("srv/data.link", "srv/data.bin"),
        L("srv/current", "data.bin", mtime=t + 2),
        D("var", mtime=t),
        D("var/cache", mode=0o755, mtime=t + 3),
        F("var/cache/kept-before-marker", b"same layer, before the opaque marker\n", mtime=t + 4),
        opaque("var/cache"),
        F("var/cache/kept-after-marker", b"same layer, after the marker\n", mtime=t + 5),
        whiteout("home/user"),
        D("etc", mtime=t),
        # (no empty-valued xattr: an empty PAX record means "unset" to Go's archive/tar/umoci)
        F("etc/motd", b"welcome\n", xattrs={"user.lang": b"en"}, mtime=t + 6),
    ]
    return [*base, layer4]


def arch_layers(arch: str) -> list[list[Member]]:
    """Two small layers whose content names the architecture."""
    return [
        [
            D("etc", mtime=DEFAULT_MTIME),
            F("etc/arch", f"{arch}\n".encode()),
            F("etc/os-release", b"ID=test\n"),
            L("etc/arch-link", "arch"),
        ],
        [
            D("bin", mtime=DEFAULT_MTIME),
            F(f"bin/tool-{arch}", os.urandom(5000), mode=0o755),
            whiteout("etc/os-release"),
        ],
    ]


def large_layers(
    total_big: int = 4, big_size: int = 25 << 20, small: int = 1500, seed: int = 11
) -> tuple[list[list[Member]], list[str]]:
    """Layers of incompressible data: `total_big` files of `big_size` bytes and `small` files
    of 1-8 KiB, in two layers. Returns (layers, paths of the small files)."""
    rng = random.Random(seed)
    layer1: list[Member] = [D("big"), D("small")]
    for i in range(total_big - 1):
        layer1.append(F(f"big/file{i}.bin", os.urandom(big_size)))
    smalls = []
    for i in range(small):
        d = f"small/d{i % 30:02d}"
        if i < 30:
            layer1.append(D(d))
        name = f"{d}/f{i:05d}.dat"
        smalls.append(name)
        layer1.append(F(name, os.urandom(rng.randint(1024, 8192))))
    layer2: list[Member] = [
        D("big"),
        F(f"big/file{total_big - 1}.bin", os.urandom(big_size)),
        D("etc"),
        F("etc/hostname", b"large\n"),
    ]
    return [layer1, layer2], smalls


__all__ = [
    "Image",
    "Layout",
    "arch_layers",
    "large_layers",
    "make_image",
    "push",
    "rich_layers",
    "sha256",
    "skopeo",
]
