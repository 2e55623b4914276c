"""Build a small OCI image layout on disk with plain code (no nydus code), and run skopeo.

The image is written independently of `nydus.oci` so that it is an outside reference: gzip tar
layers, an image config and an OCI manifest, stored as `DIR/blobs/sha256/<hex>` with `index.json`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """(gzip'ed tar, diff id) of regular files with fixed metadata."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


@dataclass
class Image:
    manifest: bytes
    config: bytes
    layers: list[bytes]  # gzip'ed tars

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]


def make_image(layer_files: list[dict[str, bytes]], arch: str = "amd64") -> Image:
    layers, diff_ids = [], []
    for files in layer_files:
        blob, diff_id = tar_layer(files)
        layers.append(blob)
        diff_ids.append(diff_id)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        },
        separators=(",", ":"),
    ).encode()
    return Image(manifest_json(config, layers), config, layers)


def manifest_json(config: bytes, layers: list[bytes]) -> bytes:
    """An OCI manifest of gzip tar layers for these config and layer bytes."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)} for b in layers
            ],
        },
        indent=2,
    ).encode()


def write_layout(directory: Path, image: Image, tag: str) -> None:
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for data in (image.manifest, image.config, *image.layers):
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": image.manifest_digest,
                        "size": len(image.manifest),
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )


def read_layout_blob(directory: Path, digest: str) -> bytes:
    return (directory / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def skopeo(*args: str) -> str:
    """Run skopeo, return stdout; a failure shows skopeo's stderr."""
    done = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout
