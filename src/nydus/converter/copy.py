"""`nydusify copy`: copy an image (OCI or Nydus: every layer, so a Nydus image keeps its
blobs and bootstrap layer) from one registry reference to another.

An index is copied whole with `--all-platforms` (same digest at the target); otherwise only
its entries for the wanted platforms (the host's by default) are copied: one entry becomes
the target tag itself, several a new index of them. Blobs the target repository has are
skipped; within one registry a blob is mounted from the source repository; others are
streamed to a file in the work directory (digest checked) and uploaded from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from nydus.errors import NydusError
from nydus.oci import mediatypes as mt
from nydus.oci.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_manifest,
)
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

__all__ = ["CopyError", "CopyOptions", "CopyResult", "copy_image", "transfer_blob"]

log = logging.getLogger("nydus.converter")


class CopyError(NydusError):
    pass


@dataclass
class CopyOptions:
    source: str
    target: str
    source_insecure: bool = False
    target_insecure: bool = False
    all_platforms: bool = False
    platforms: list[str] = field(default_factory=list)  # empty: the host's
    work_dir: str = "./tmp"
    push_chunk_size: int = 0
    parallel: int = 4


@dataclass
class CopyResult:
    digest: str  # of what the target tag names
    media_type: str
    blobs: int = 0  # distinct blobs of the copied manifests
    uploaded: int = 0
    mounted: int = 0
    existing: int = 0
    bytes_uploaded: int = 0


def copy_image(o: CopyOptions) -> CopyResult:
    if o.all_platforms and o.platforms:
        raise CopyError("--platform and --all-platforms conflict")
    sref, tref = Reference.parse(o.source), Reference.parse(o.target)
    if not tref.tag and not tref.digest:
        raise CopyError(f"target {o.target} names no tag")
    src = RegistryClient.for_reference(sref, skip_verify=o.source_insecure)
    same_host = sref.host == tref.host and o.source_insecure == o.target_insecure
    dst = src if same_host else RegistryClient.for_reference(tref, skip_verify=o.target_insecure)
    os.makedirs(o.work_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="nydusify-copy-", dir=o.work_dir)
    try:
        return _copy(o, src, dst, sref, tref, same_host, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        src.close()
        if dst is not src:
            dst.close()


def _copy(
    o: CopyOptions,
    src: RegistryClient,
    dst: RegistryClient,
    sref: Reference,
    tref: Reference,
    same_host: bool,
    tmp: str,
) -> CopyResult:
    top = src.get_manifest(sref.repo, sref.ref)
    doc = parse_manifest(top.data, top.media_type)
    # (descriptor, raw manifest, parsed) of every manifest to copy
    manifests: list[tuple[Descriptor, bytes, Manifest]] = []
    entries: list[Descriptor] = []
    if isinstance(doc, Index):
        wanted = [Platform.parse(p) for p in o.platforms] or [host_platform()]
        for e in doc.manifests:
            if not mt.is_manifest(e.media_type):
                continue
            if o.all_platforms or (
                e.platform is not None and any(w.matches(e.platform) for w in wanted)
            ):
                entries.append(e)
        if not entries:
            have = ", ".join(sorted({str(e.platform) for e in doc.manifests if e.platform}))
            raise CopyError(
                f"source index {o.source} has no manifest for platform "
                f"{', '.join(str(w) for w in wanted)} (platforms: {have or 'none'})"
            )
        for e in entries:
            fetched = src.get_manifest(sref.repo, e.digest)
            manifests.append((e, fetched.data, Manifest.from_json(fetched.data)))
    else:
        d = Descriptor(top.media_type, top.digest, len(top.data))
        manifests.append((d, top.data, doc))
    blobs: dict[str, Descriptor] = {}
    for _d, _raw, m in manifests:
        for b in (m.config, *m.layers):
            blobs.setdefault(b.digest, b)
    res = CopyResult("", "", blobs=len(blobs))

    def one(desc: Descriptor) -> tuple[str, int]:
        return transfer_blob(
            src,
            sref.repo,
            dst,
            tref.repo,
            desc,
            tmp,
            same_registry=same_host,
            push_chunk_size=o.push_chunk_size,
        )

    with ThreadPoolExecutor(max(1, min(o.parallel, len(blobs)))) as pool:
        for how, n in pool.map(one, blobs.values()):
            if how == "uploaded":
                res.uploaded += 1
                res.bytes_uploaded += n
            elif how == "mounted":
                res.mounted += 1
            else:
                res.existing += 1
    for d, raw, m in manifests:
        log.info("Pushing manifest %s", d.digest)
        dst.put_manifest(tref.repo, d.digest, raw, m.media_type or d.media_type)
    tag = tref.tag or tref.ref
    if isinstance(doc, Index) and (o.all_platforms or len(entries) > 1):
        if o.all_platforms:
            data, media = top.data, top.media_type
        else:
            sub = Index(manifests=entries, media_type=doc.media_type or mt.OCI_INDEX)
            data, media = sub.to_json(indent=2), sub.media_type or mt.OCI_INDEX
        log.info("Pushing index %s", tag)
        res.digest = dst.put_manifest(tref.repo, tag, data, media)
        res.media_type = media
    else:
        d, raw, m = manifests[0]
        media = m.media_type or d.media_type
        log.info("Pushing manifest %s as %s", d.digest, tag)
        res.digest = dst.put_manifest(tref.repo, tag, raw, media)
        res.media_type = media
    log.info(
        "Copied %s to %s: %d blobs (%d uploaded, %d mounted, %d already there)",
        o.source,
        o.target,
        res.blobs,
        res.uploaded,
        res.mounted,
        res.existing,
    )
    return res


def transfer_blob(
    src: RegistryClient,
    src_repo: str,
    dst: RegistryClient,
    dst_repo: str,
    desc: Descriptor,
    tmp: str,
    *,
    same_registry: bool,
    push_chunk_size: int = 0,
) -> tuple[str, int]:
    """Make `dst_repo` have blob `desc` of `src_repo`: skipped when there, mounted within one
    registry, else streamed to a file under `tmp` (digest checked) and uploaded from it.
    Returns ("exists" | "mounted" | "uploaded", bytes uploaded)."""
    if dst.stat_blob(dst_repo, desc.digest) is not None:
        log.info("Blob %s already exists at the target", desc.digest)
        return "exists", 0
    fd, path = tempfile.mkstemp(prefix="blob-", dir=tmp)
    os.close(fd)
    try:
        if same_registry:
            # a mount needs no data; the empty file is only read if the registry refuses it
            how = _try_mount(dst, dst_repo, src_repo, desc, path)
            if how is not None:
                return how, 0
        log.info("Copying blob %s (%d bytes)", desc.digest, desc.size)
        size = src.get_blob(src_repo, desc.digest, path)
        if desc.size >= 0 and size != desc.size:
            raise CopyError(
                f"blob {desc.digest} has {size} bytes in {src_repo}, its descriptor says "
                f"{desc.size}"
            )
        how = dst.push_blob(dst_repo, desc.digest, path, size, chunk_size=push_chunk_size)
        return how, size
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _try_mount(
    dst: RegistryClient,
    repo: str,
    from_repo: str,
    desc: Descriptor,
    empty: str,
) -> str | None:
    """A cross-repository mount within one registry; None if the registry wants an upload."""
    if repo == from_repo:
        return "exists"
    try:
        how = dst.push_blob(repo, desc.digest, empty, 0, from_repo=from_repo)
    except NydusError as exc:
        log.debug("mount of %s from %s refused (%s): uploading", desc.digest, from_repo, exc)
        return None
    return how
