"""`nydusify convert`: pull an OCI image, build every layer into a Nydus blob (tar-rafs,
inline meta, ToC; layers in parallel, no parent), merge the per-layer bootstraps, and
push blob layers, the bootstrap layer, config and manifest (and index) as upstream does
(interfaces.md §1, §2.1)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nydus import __version__
from nydus.builder.build import CreateOptions, MergeLayer, Merger, create
from nydus.builder.inline import blob_meta_cache
from nydus.converter.blob_target import BlobTarget, open_blob_target
from nydus.converter.bootstrap_layer import make_bootstrap_layer
from nydus.converter.layer_stream import LayerStream
from nydus.errors import NydusError
from nydus.oci import mediatypes as mt
from nydus.oci.manifest import Descriptor, Index, Manifest, Platform, go_json, parse_manifest
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester, sha256_file

log = logging.getLogger("nydus.converter")

EMPTY_LAYER_DIGEST = "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1"
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


class ConvertError(NydusError):
    pass


@dataclass
class ConvertOptions:
    source: str
    target: str
    work_dir: str = "./tmp"
    source_insecure: bool = False
    target_insecure: bool = False
    compressor: str = "zstd"
    chunk_size: int = 0x100000
    platforms: list[str] = field(default_factory=list)  # empty: host platform
    all_platforms: bool = False
    merge_platform: bool = False
    oci: bool = False
    prefetch_patterns: list[str] | None = None
    backend_type: str | None = None  # localfs, s3, oss: blobs there, not in the registry
    backend_config: dict[str, Any] | None = None
    backend_force_push: bool = False
    parallel: int = 4
    chunk_dict: str | None = None  # a Nydus image whose chunks the layers reference
    chunk_dict_insecure: bool = False


@dataclass
class ConvertedManifest:
    platform: Platform | None
    source_desc: Descriptor
    manifest: Manifest
    data: bytes
    digest: str
    bootstrap: str


def _client(ref: Reference, insecure: bool) -> RegistryClient:
    return RegistryClient.for_reference(ref, skip_verify=insecure)


def _ref_dir(ref: Reference) -> str:
    name = f"{ref.host}/{ref.repo}"
    tag = ref.tag or (ref.digest or "latest").replace(":", "_")
    return f"{name}:{tag}"


def convert(o: ConvertOptions) -> list[ConvertedManifest]:
    src_ref, dst_ref = Reference.parse(o.source), Reference.parse(o.target)
    Compressor.from_name(o.compressor)
    src = _client(src_ref, o.source_insecure)
    dst = (
        src
        if (dst_ref.host == src_ref.host and o.target_insecure == o.source_insecure)
        else _client(dst_ref, o.target_insecure)
    )
    target: BlobTarget | None = None
    cdict: _ChunkDict | None = None
    try:
        target = open_blob_target(
            o.backend_type, o.backend_config, dst, dst_ref, o.backend_force_push
        )
        top = src.get_manifest(src_ref.repo, src_ref.ref)
        doc = parse_manifest(top.data, top.media_type)
        wanted = [Platform.parse(p) for p in o.platforms] if o.platforms else []
        if not wanted:
            from nydus.oci.manifest import host_platform

            wanted = [host_platform()]
        entries: list[tuple[Descriptor, Platform | None]] = []
        if isinstance(doc, Index):
            for d in doc.manifests:
                if d.platform is None or not mt.is_manifest(d.media_type):
                    continue
                if o.all_platforms or any(d.platform.matches(w) for w in wanted):
                    if not o.all_platforms and any(
                        d.platform.matches(e[1]) for e in entries if e[1] is not None
                    ):
                        continue
                    entries.append((d, d.platform))
            if not entries:
                raise ConvertError(
                    f"source image {o.source} has no manifest for platform "
                    f"{', '.join(f'{w.os}/{w.architecture}' for w in wanted)}"
                )
        else:
            entries.append((Descriptor(top.media_type, top.digest, len(top.data)), None))
        cdict = _ChunkDict.fetch(o, wanted[0]) if o.chunk_dict else None
        results = []
        for desc, plat in entries:
            pname = (
                f"{plat.os}/{plat.architecture}"
                if plat
                else ",".join(f"{w.os}/{w.architecture}" for w in wanted)
            )
            log.info("Pulling image %s with platform %s", o.source, pname)
            sub = "" if len(entries) == 1 else f"{plat.os}-{plat.architecture}" if plat else ""
            results.append(
                _convert_one(o, src, dst, target, src_ref, dst_ref, desc, plat, sub, cdict)
            )
        _push_top(o, dst, dst_ref, doc, results)
        log.info("Success convert image %s to %s", o.source, o.target)
        return results
    finally:
        if target is not None:
            target.close()
        src.close()
        if dst is not src:
            dst.close()
        if cdict is not None:
            cdict.client.close()


@dataclass
class _ChunkDict:
    """`--chunk-dict`: a Nydus image's bootstrap, and where its blobs are."""

    ref: Reference
    client: RegistryClient
    bootstrap: str

    @classmethod
    def fetch(cls, o: ConvertOptions, platform: Platform) -> _ChunkDict:
        from nydus.converter.mount import MountOptions, fetch_bootstrap

        assert o.chunk_dict is not None
        text = o.chunk_dict
        for prefix in ("bootstrap:registry:", "bootstrap:local:"):
            text = text.removeprefix(prefix)  # upstream takes a local one as a reference too
        path = os.path.join(o.work_dir, "chunk-dict", "bootstrap")
        client, ref = fetch_bootstrap(
            MountOptions(
                target=text,
                target_insecure=o.chunk_dict_insecure,
                platform=f"{platform.os}/{platform.architecture}",
            ),
            Path(path),
        )
        log.info("Using chunk dict %s", ref.normalized())
        return cls(ref, client, path)

    def push(
        self, o: ConvertOptions, dst: RegistryClient, dst_ref: Reference, blobs: list[Descriptor]
    ) -> None:
        """Make the target repository hold the dictionary blobs the image references."""
        if o.backend_type is not None:
            raise ConvertError("--chunk-dict with --backend-type is not supported")
        import tempfile

        from nydus.converter.copy import transfer_blob

        tmp = tempfile.mkdtemp(prefix="nydusify-dict-", dir=o.work_dir)
        try:
            for d in blobs:
                log.info("Pushing chunk dict blob %s", d.digest)
                transfer_blob(
                    self.client,
                    self.ref.repo,
                    dst,
                    dst_ref.repo,
                    d,
                    tmp,
                    same_registry=self.ref.host == dst_ref.host,
                )
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _convert_one(
    o: ConvertOptions,
    src: RegistryClient,
    dst: RegistryClient,
    target: BlobTarget,
    src_ref: Reference,
    dst_ref: Reference,
    desc: Descriptor,
    plat: Platform | None,
    sub: str,
    cdict: _ChunkDict | None = None,
) -> ConvertedManifest:
    fetched = src.get_manifest(src_ref.repo, desc.digest)
    manifest = Manifest.from_json(fetched.data)
    config = json.loads(src.read_blob(src_ref.repo, manifest.config.digest))
    src_dir = os.path.join(o.work_dir, _ref_dir(src_ref))
    dst_dir = os.path.join(o.work_dir, _ref_dir(dst_ref), sub)
    blob_dir = os.path.join(dst_dir, "blobs")
    for d in (src_dir, blob_dir):
        os.makedirs(d, exist_ok=True)

    compressor = Compressor.from_name(o.compressor)

    # blobs are pushed as soon as each is built, while other layers still build
    pushes: list[Future[None]] = []
    push_pool = ThreadPoolExecutor(max(1, o.parallel), thread_name_prefix="push")
    pushed: set[str] = set()
    pushed_lock = threading.Lock()

    def push_soon(digest: str) -> None:
        with pushed_lock:
            if digest in pushed:
                return
            pushed.add(digest)
        pushes.append(push_pool.submit(target.push, digest, os.path.join(blob_dir, digest[7:])))

    def one_layer(layer: Descriptor) -> tuple[str, int, MergeLayer]:
        path = os.path.join(src_dir, layer.digest)
        if _have(path, layer.digest):
            pieces: Iterable[bytes] = _file_pieces(path)
            cache = None
        else:
            log.info("Pulling layer %s", layer.digest)
            pieces = _progress(src.iter_blob(src_ref.repo, layer.digest), layer)
            cache = path
        log.info("Building layer %s", layer.digest)
        tmp_blob = os.path.join(blob_dir, f".building-{layer.digest[7:]}")
        with LayerStream(pieces, cache, f"source layer {layer.digest}") as stream:
            res = create(
                CreateOptions(
                    source=path,
                    source_stream=stream,  # type: ignore[arg-type]
                    source_type="tar-rafs",
                    blob=tmp_blob,
                    blob_inline_meta=True,
                    blob_toc=True,
                    whiteout_spec="none",
                    compressor=compressor,
                    chunk_size=o.chunk_size,
                    prefetch_patterns=o.prefetch_patterns or ["/"],
                    keep_tree=True,
                    chunk_dict=cdict.bootstrap if cdict is not None else None,
                )
            )
            stream.finish()  # the rest of the download: its digest is checked at the end
        assert res.blob_file_digest is not None and res.blob_path is not None
        digest, size = res.blob_file_digest, res.blob_size
        os.replace(tmp_blob, os.path.join(blob_dir, digest[7:]))
        push_soon(digest)
        assert res.tree is not None
        # the blob id of a converted layer is its layer digest (interfaces §1.5); the other
        # entries of its blob table are chunk dict blobs
        own = res.blob_info.blob_index if res.blob_info is not None else -1
        blobs = [
            replace(b, blob_id=digest[7:], compressed_size=size) if b.blob_index == own else b
            for b in res.blob_table
        ]
        return digest, size, MergeLayer(res.tree, blobs, o.chunk_size, compressor, Digester.BLAKE3)

    layers = list(manifest.layers)
    if not layers:
        raise ConvertError(f"source image {o.source} has no layers")
    try:
        with ThreadPoolExecutor(max(1, min(o.parallel, len(layers)))) as pool:
            built = list(pool.map(one_layer, layers))
        return _finish(
            o,
            dst,
            target,
            dst_ref,
            src_ref,
            desc,
            plat,
            fetched,
            manifest,
            config,
            dst_dir,
            blob_dir,
            compressor,
            built,
            pushes,
            cdict,
        )
    finally:
        push_pool.shutdown(wait=True, cancel_futures=True)


def _finish(
    o: ConvertOptions,
    dst: RegistryClient,
    target: BlobTarget,
    dst_ref: Reference,
    src_ref: Reference,
    desc: Descriptor,
    plat: Platform | None,
    fetched: Any,
    manifest: Manifest,
    config: dict[str, Any],
    dst_dir: str,
    blob_dir: str,
    compressor: Compressor,
    built: list[tuple[str, int, MergeLayer]],
    pushes: list[Future[None]],
    cdict: _ChunkDict | None,
) -> ConvertedManifest:
    # bootstrap-parent (all layers but the top one), then bootstrap (all layers), in one pass
    boot_path = os.path.join(dst_dir, "bootstrap")
    merger = Merger()
    for b in built[:-1]:
        merger.add(b[2])
    if len(built) > 1:
        merger.write(os.path.join(dst_dir, "bootstrap-parent"))
    merger.add(built[-1][2])
    merged = merger.write(boot_path, o.prefetch_patterns)
    own_ids = {b[0][7:] for b in built}
    dict_descs = [
        Descriptor(
            mt.NYDUS_BLOB,
            "sha256:" + bid,
            _blob_size(cdict, bid),
            annotations={mt.NYDUS_BLOB_ANNOTATION: "true"},
        )
        for bid in merged.blob_ids
        if bid not in own_ids and cdict is not None
    ]
    with open(boot_path, "rb") as f:
        bootstrap = f.read()
    # push blob layers
    blob_descs = []
    seen: set[str] = set()
    metas: list[tuple[str, bytes]] = []
    for digest, size, _ in built:
        blob_descs.append(
            Descriptor(mt.NYDUS_BLOB, digest, size, annotations={mt.NYDUS_BLOB_ANNOTATION: "true"})
        )
        if digest in seen:
            continue
        seen.add(digest)
        meta = blob_meta_cache(os.path.join(blob_dir, digest[7:]))
        if meta is not None:
            metas.append((digest[7:], meta))
    for fut in pushes:  # started as each blob was built
        fut.result()
    if cdict is not None and dict_descs:
        cdict.push(o, dst, dst_ref, dict_descs)
    blob_descs += dict_descs
    docker = mt.is_docker(fetched.media_type) and not o.oci
    layer = make_bootstrap_layer(bootstrap, metas)
    log.info("Pushing bootstrap layer %s", layer.digest)
    dst.push_blob(dst_ref.repo, layer.digest, layer.gz, len(layer.gz))
    boot_desc = Descriptor(
        mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
        layer.digest,
        len(layer.gz),
        annotations={mt.NYDUS_BOOTSTRAP_ANNOTATION: "true", mt.NYDUS_FS_VERSION_ANNOTATION: "6"},
    )
    external = target.external
    new_config = copy.deepcopy(config)
    rootfs = new_config.setdefault("rootfs", {"type": "layers"})
    rootfs["diff_ids"] = ([] if external else [d.digest for d in blob_descs]) + [layer.diff_id]
    history = [] if external else list(new_config.get("history") or [])
    history.append({"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"})
    new_config["history"] = history
    config_bytes = go_json(new_config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    dst.push_blob(dst_ref.repo, config_digest, config_bytes, len(config_bytes))
    config_type = mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
    nydus = Manifest(
        config=Descriptor(config_type, config_digest, len(config_bytes)),
        layers=([] if external else blob_descs) + [boot_desc],
        media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
        annotations={
            mt.NYDUS_SOURCE_DIGEST_ANNOTATION: desc.digest,
            mt.NYDUS_SOURCE_REFERENCE_ANNOTATION: src_ref.normalized(),
            mt.NYDUS_FS_VERSION_ANNOTATION: "6",
            mt.NYDUS_BUILDER_VERSION_ANNOTATION: f"v{__version__}",
        },
    )
    data = nydus.to_json(indent=2)
    return ConvertedManifest(
        plat or _config_platform(config),
        desc,
        nydus,
        data,
        "sha256:" + hashlib.sha256(data).hexdigest(),
        boot_path,
    )


def _blob_size(cdict: _ChunkDict | None, blob_id: str) -> int:
    assert cdict is not None
    size = cdict.client.stat_blob(cdict.ref.repo, "sha256:" + blob_id)
    if size is None or size < 0:
        raise ConvertError(f"chunk dict blob {blob_id} is missing from {cdict.ref.normalized()}")
    return size


def _config_platform(config: dict[str, Any]) -> Platform | None:
    if config.get("os") and config.get("architecture"):
        return Platform(config["os"], config["architecture"], config.get("variant") or None)
    return None


def _push_top(
    o: ConvertOptions,
    dst: RegistryClient,
    dst_ref: Reference,
    source_doc: Manifest | Index,
    results: list[ConvertedManifest],
) -> None:
    repo, tag = dst_ref.repo, dst_ref.ref
    if o.merge_platform:
        log.info("Pushing nydus manifest")
        entries = []
        for r in results:
            dst.put_manifest(repo, r.digest, r.data, r.manifest.media_type or mt.OCI_MANIFEST)
        # merged index: (source manifests are referenced as they are) then Nydus manifests
        for r in results:
            entries.append(
                Descriptor(
                    r.source_desc.media_type,
                    r.source_desc.digest,
                    r.source_desc.size,
                    platform=r.platform,
                )
            )
        for r in results:
            nydus = copy.deepcopy(r.manifest)
            nydus.config.media_type = mt.NYDUS_CONFIG
            data = nydus.to_json(indent=2)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            dst.put_manifest(repo, digest, data, nydus.media_type or mt.OCI_MANIFEST)
            entries.append(
                Descriptor(
                    nydus.media_type or mt.OCI_MANIFEST,
                    digest,
                    len(data),
                    platform=r.platform,
                    artifact_type=mt.NYDUS_MANIFEST_ARTIFACT,
                )
            )
        index = Index(manifests=entries, media_type=None)
        log.info("Pushing manifest index")
        dst.put_manifest(repo, tag, index.to_json(indent=2), mt.OCI_INDEX)
        return
    if len(results) == 1:
        r = results[0]
        log.info("Pushing nydus manifest")
        dst.put_manifest(repo, tag, r.data, r.manifest.media_type or mt.OCI_MANIFEST)
        return
    docker_list = (
        isinstance(source_doc, Index) and mt.is_docker(source_doc.media_type) and not o.oci
    )
    for r in results:
        log.info("Pushing nydus manifest %s", r.digest)
        dst.put_manifest(repo, r.digest, r.data, r.manifest.media_type or mt.OCI_MANIFEST)
    index = Index(
        manifests=[
            Descriptor(
                r.manifest.media_type or mt.OCI_MANIFEST, r.digest, len(r.data), platform=r.platform
            )
            for r in results
        ],
        media_type=mt.DOCKER_MANIFEST_LIST if docker_list else mt.OCI_INDEX,
    )
    log.info("Pushing manifest index")
    dst.put_manifest(repo, tag, index.to_json(indent=2), index.media_type or mt.OCI_INDEX)


def _have(path: str, digest: str) -> bool:
    return os.path.exists(path) and file_digest(path)[0] == digest


def file_digest(path: str) -> tuple[str, int]:
    hexdigest, size = sha256_file(path)
    return "sha256:" + hexdigest, size


class _Progress:
    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.total >= 16 << 20 and now - self.last >= 2:
            self.last = now
            log.info(
                "Pulling layer %s: %d%% (%d/%d MB)",
                self.what,
                100 * self.done // max(1, self.total),
                self.done >> 20,
                self.total >> 20,
            )


def _progress(pieces: Iterable[bytes], layer: Descriptor) -> Iterator[bytes]:
    progress = _Progress(layer.digest, layer.size)
    for piece in pieces:
        progress.update(len(piece))
        yield piece


def _file_pieces(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            yield piece
