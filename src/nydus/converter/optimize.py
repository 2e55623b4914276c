"""`nydusify optimize`: rebuild a Nydus image in a registry so that the files a workload
reads first live, in that order, in one added prefetch blob (policy
`separated-blob-with-prefetch-files`, upstream's layout):

* the manifest keeps the source's blob layers, then the prefetch blob layer, then a new
  bootstrap layer (`image/image.boot`, the blob metas, `image/prefetch.files`) annotated with
  `containerd.io/snapshot/nydus-separated-blob-with-prefetch-files: <blob id>`;
* the config's diff ids follow the layers (the bootstrap's is its tar digest).

Only the chunks of the listed files are read from the source blobs (Range requests, merged).
The list comes from `--prefetch-files` or is recorded by running `--workload` over a lazy
mount of the source image (see `workload.py`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nydus.builder.inline import blob_meta_cache
from nydus.builder.optimize import (
    OptimizeResult,
    optimize,
    parse_prefetch_list,
    read_prefetch_list,
)
from nydus.converter.bootstrap_layer import (
    make_bootstrap_layer,
    read_blob_metas,
    read_bootstrap_layer,
)
from nydus.converter.check import FetchedImage, fetch_image
from nydus.errors import BuildError, FormatError, NydusError
from nydus.oci import mediatypes as mt
from nydus.oci.manifest import Descriptor, Manifest, Platform, go_json, host_platform
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

__all__ = ["OptimizeError", "OptimizeOptions", "OptimizedImage", "optimize_image"]

log = logging.getLogger("nydus.converter")

POLICIES = ("separated-blob-with-prefetch-files",)


class OptimizeError(NydusError):
    pass


@dataclass
class OptimizeOptions:
    source: str
    target: str
    source_insecure: bool = False
    target_insecure: bool = False
    prefetch_files: str | None = None  # a list file; None: record one with `workload`
    workload: str | None = None  # a shell command run in a chroot of the mounted source
    workload_timeout: float = 300.0
    policy: str = POLICIES[0]
    platform: str | None = None
    work_dir: str = "./tmp"
    nydusd: str | None = None  # for --workload; default beside this interpreter, then PATH
    mount_timeout: float = 60.0


@dataclass
class OptimizedImage:
    manifest_digest: str
    prefetch_blob: str  # blob id (sha256 hex)
    prefetch_blob_size: int
    files: list[str] = field(default_factory=list)  # the listed files moved
    chunks: int = 0


def optimize_image(o: OptimizeOptions) -> OptimizedImage:
    if o.policy not in POLICIES:
        raise OptimizeError(f"unsupported --policy {o.policy!r} (want {', '.join(POLICIES)})")
    if (o.prefetch_files is None) == (o.workload is None):
        raise OptimizeError("give exactly one of --prefetch-files and --workload")
    try:
        sref, tref = Reference.parse(o.source), Reference.parse(o.target)
        platform = Platform.parse(o.platform) if o.platform else host_platform()
    except NydusError as exc:
        raise OptimizeError(str(exc)) from None
    listing = None
    if o.prefetch_files is not None:
        try:
            listing, _entries = read_prefetch_list(o.prefetch_files)
        except BuildError as exc:
            raise OptimizeError(str(exc)) from None
    os.makedirs(o.work_dir, exist_ok=True)
    src = RegistryClient.for_reference(sref, skip_verify=o.source_insecure)
    dst = (
        src
        if tref.host == sref.host and o.target_insecure == o.source_insecure
        else RegistryClient.for_reference(tref, skip_verify=o.target_insecure)
    )
    work = Path(tempfile.mkdtemp(prefix="nydusify-optimize-", dir=o.work_dir))
    try:
        log.info("Parsing image %s", o.source)
        image = fetch_image(src, sref, platform, nydus=True, multi=False)
        boot_desc = _bootstrap_desc(image)
        log.info("Pulling Nydus bootstrap %s", boot_desc.digest)
        old_layer = src.read_blob(sref.repo, boot_desc.digest)
        try:
            bootstrap = read_bootstrap_layer(old_layer)
            metas = read_blob_metas(old_layer)
        except FormatError as exc:
            raise OptimizeError(f"bootstrap layer {boot_desc.digest}: {exc}") from None
        boot_path = work / "nydus_bootstrap"
        boot_path.write_bytes(bootstrap)
        if listing is None:
            from nydus.converter.workload import record_workload

            assert o.workload is not None
            listing = record_workload(o, sref, boot_path, work)
        list_path = work / "prefetch.files"
        list_path.write_text(listing, encoding="utf-8")
        blob_dir = work / "blobs"
        blob_dir.mkdir()

        def read(blob_id: str, offset: int, size: int) -> bytes:
            return src.get_blob_range(sref.repo, "sha256:" + blob_id, offset, size)

        log.info("Building prefetch blob and bootstrap")
        try:
            res = optimize(
                str(boot_path),
                parse_prefetch_list(listing, "prefetch files"),
                read,
                str(work / "optimized_bootstrap"),
                str(blob_dir),
            )
        except BuildError as exc:
            raise OptimizeError(str(exc)) from None
        log.info(
            "prefetch blob %s: %d chunks of %d files (%d bytes)",
            res.blob_id,
            res.chunks,
            len(res.files),
            res.blob_size,
        )
        digest = _push(dst, tref, image, boot_desc, res, metas, listing.encode())
        log.info("Success optimize image %s to %s", o.source, o.target)
        return OptimizedImage(digest, res.blob_id, res.blob_size, res.files, res.chunks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if dst is not src:
            dst.close()
        src.close()


def _bootstrap_desc(image: FetchedImage) -> Descriptor:
    layers = image.manifest.layers
    if not layers or layers[-1].annotations.get(mt.NYDUS_BOOTSTRAP_ANNOTATION) != "true":
        raise OptimizeError(f"image {image.ref} has no Nydus bootstrap layer (last layer)")
    if mt.NYDUS_PREFETCH_BLOB_ANNOTATION in layers[-1].annotations:
        raise OptimizeError(f"image {image.ref} is optimized already (it has a prefetch blob)")
    return layers[-1]


def _push(
    dst: RegistryClient,
    tref: Reference,
    image: FetchedImage,
    boot_desc: Descriptor,
    res: OptimizeResult,
    metas: list[tuple[str, bytes]],
    listing: bytes,
) -> str:
    repo = tref.repo
    blob_layers = [copy.deepcopy(d) for d in image.manifest.layers[:-1]]
    if image.ref.repo != repo or image.ref.host != tref.host:
        # a new repository needs the source blobs too (mounted when the registry can)
        for d in blob_layers:
            if not dst.blob_exists(repo, d.digest):
                raise OptimizeError(
                    f"blob layer {d.digest} is not in {tref.host}/{repo}: optimize into the "
                    "source repository (a new tag) or copy the source image there first"
                )
    blob_digest = "sha256:" + res.blob_id
    log.info("Pushing prefetch blob layer %s", blob_digest)
    dst.push_blob(repo, blob_digest, res.blob_path, res.blob_size)
    blob_desc = Descriptor(
        mt.NYDUS_BLOB,
        blob_digest,
        res.blob_size,
        annotations={mt.NYDUS_BLOB_ANNOTATION: "true"},
    )
    new_meta = blob_meta_cache(res.blob_path)
    all_metas = [*metas, *([(res.blob_id, new_meta)] if new_meta is not None else [])]
    layer = make_bootstrap_layer(
        Path(res.bootstrap).read_bytes(), all_metas, [("prefetch.files", listing)]
    )
    log.info("Pushing bootstrap layer %s", layer.digest)
    dst.push_blob(repo, layer.digest, layer.gz, len(layer.gz))
    annotations = dict(boot_desc.annotations)
    annotations[mt.NYDUS_PREFETCH_BLOB_ANNOTATION] = res.blob_id
    new_boot = Descriptor(
        boot_desc.media_type, layer.digest, len(layer.gz), annotations=annotations
    )
    config = copy.deepcopy(image.config)
    rootfs = config.setdefault("rootfs", {"type": "layers"})
    rootfs["diff_ids"] = [d.digest for d in blob_layers] + [blob_digest, layer.diff_id]
    history = config.get("history")
    if isinstance(history, list) and history:
        history.insert(
            len(history) - 1, {"created_by": "Nydus Optimizer", "comment": "Nydus Prefetch Blob"}
        )
    config_bytes = go_json(config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    dst.push_blob(repo, config_digest, config_bytes, len(config_bytes))
    m = image.manifest
    manifest = Manifest(
        config=Descriptor(m.config.media_type, config_digest, len(config_bytes)),
        layers=[*blob_layers, blob_desc, new_boot],
        media_type=m.media_type,
        annotations=dict(m.annotations),
    )
    data = manifest.to_json(indent=2)
    log.info("Pushing nydus manifest")
    dst.put_manifest(repo, tref.ref, data, manifest.media_type or mt.OCI_MANIFEST)
    return "sha256:" + hashlib.sha256(data).hexdigest()
