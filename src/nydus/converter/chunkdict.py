"""`nydusify chunkdict generate`: a chunk dictionary image from several Nydus images.

The sources' bootstraps are pulled, `nydus-image chunkdict generate` keeps the chunks that
at least two of them hold, and with `--target` the dictionary is pushed as a Nydus image: its
bootstrap layer plus, as blob layers, the source blobs those chunks live in (mounted or
copied from the source repositories). `nydusify convert --chunk-dict bootstrap:registry:REF`
then takes it like any Nydus image.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nydus import __version__
from nydus.builder.build import load_bootstrap
from nydus.builder.chunkdict import GenerateResult, generate_chunk_dict
from nydus.converter.bootstrap_layer import make_bootstrap_layer
from nydus.converter.copy import transfer_blob
from nydus.converter.mount import MountOptions, fetch_bootstrap
from nydus.errors import NydusError
from nydus.oci import mediatypes as mt
from nydus.oci.manifest import Descriptor, Manifest, go_json, host_platform
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

__all__ = ["ChunkDictError", "ChunkDictOptions", "generate"]

log = logging.getLogger("nydus.converter")


class ChunkDictError(NydusError):
    pass


@dataclass
class ChunkDictOptions:
    sources: list[str]
    target: str | None = None
    source_insecure: bool = False
    target_insecure: bool = False
    work_dir: str = "./output"
    platform: str | None = None
    min_images: int = 2


def generate(o: ChunkDictOptions) -> GenerateResult:
    if len(o.sources) < 2:
        raise ChunkDictError("--sources needs at least two images")
    work = Path(o.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pulled: list[tuple[Reference, RegistryClient, Path]] = []
    try:
        for i, src in enumerate(o.sources):
            path = work / "sources" / str(i) / "bootstrap"
            client, ref = fetch_bootstrap(
                MountOptions(target=src, target_insecure=o.source_insecure, platform=o.platform),
                path,
            )
            pulled.append((ref, client, path))
        out = work / "chunkdict" / "bootstrap"
        out.parent.mkdir(parents=True, exist_ok=True)
        res = generate_chunk_dict([str(p) for _r, _c, p in pulled], str(out), None, o.min_images)
        if o.target:
            _push(o, pulled, out, res)
        return res
    finally:
        for _ref, client, _path in pulled:
            client.close()


def _push(
    o: ChunkDictOptions,
    pulled: list[tuple[Reference, RegistryClient, Path]],
    boot_path: Path,
    res: GenerateResult,
) -> None:
    assert o.target is not None
    tref = Reference.parse(o.target)
    # which source holds each dictionary blob
    holder: dict[str, tuple[Reference, RegistryClient]] = {}
    for ref, client, path in pulled:
        for b in load_bootstrap(str(path)).blobs:
            holder.setdefault(b.blob_id, (ref, client))
    dst = RegistryClient.for_reference(tref, skip_verify=o.target_insecure)
    tmp = tempfile.mkdtemp(prefix="nydusify-chunkdict-", dir=o.work_dir)
    try:
        layers = []
        for bid in res.blob_ids:
            ref, client = holder[bid]
            digest = "sha256:" + bid
            size = client.stat_blob(ref.repo, digest)
            if size is None or size < 0:
                raise ChunkDictError(f"blob {bid} is missing from {ref.normalized()}")
            d = Descriptor(
                mt.NYDUS_BLOB, digest, size, annotations={mt.NYDUS_BLOB_ANNOTATION: "true"}
            )
            log.info("Pushing chunk dict blob %s", digest)
            transfer_blob(
                client, ref.repo, dst, tref.repo, d, tmp, same_registry=ref.host == tref.host
            )
            layers.append(d)
        boot = make_bootstrap_layer(boot_path.read_bytes(), [])
        log.info("Pushing chunk dict bootstrap layer %s", boot.digest)
        dst.push_blob(tref.repo, boot.digest, boot.gz, len(boot.gz))
        boot_desc = Descriptor(
            mt.OCI_LAYER_GZIP,
            boot.digest,
            len(boot.gz),
            annotations={
                mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
                mt.NYDUS_FS_VERSION_ANNOTATION: "6",
            },
        )
        plat = host_platform()
        config = go_json(
            {
                "architecture": plat.architecture,
                "os": plat.os,
                "config": {},
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [d.digest for d in layers] + [boot.diff_id],
                },
                "history": [{"created_by": "Nydus Converter", "comment": "Nydus Chunk Dict"}],
            }
        )
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        dst.push_blob(tref.repo, config_digest, config, len(config))
        manifest = Manifest(
            config=Descriptor(mt.OCI_CONFIG, config_digest, len(config)),
            layers=[*layers, boot_desc],
            media_type=mt.OCI_MANIFEST,
            annotations={
                mt.NYDUS_FS_VERSION_ANNOTATION: "6",
                mt.NYDUS_BUILDER_VERSION_ANNOTATION: f"v{__version__}",
            },
        )
        log.info("Pushing chunk dict manifest %s", o.target)
        dst.put_manifest(
            tref.repo, tref.tag or tref.ref, manifest.to_json(indent=2), mt.OCI_MANIFEST
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        dst.close()
    log.info("Pushed chunk dict %s: %d chunks in %d blobs", o.target, res.chunks, len(layers))
