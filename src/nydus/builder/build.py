"""`nydus-image create` and `nydus-image merge` as library calls."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO, NoReturn

from nydus.builder.blob import BlobWriter
from nydus.builder.bootstrap import BootstrapOptions, write_bootstrap
from nydus.builder.output import AtomicFile, write_atomic
from nydus.builder.overlay import apply_layer, load_tree, strip_whiteouts
from nydus.builder.source_dir import read_dir_tree
from nydus.builder.source_tar import read_tar_tree
from nydus.builder.tree import Chunk, Node
from nydus.errors import BuildError, FormatError
from nydus.format.constants import (
    PLACEHOLDER_BLOB_ID,
    BlobFeatures,
    SuperFlags,
    valid_chunk_size,
)
from nydus.format.rafs import RafsSuper, open_bootstrap
from nydus.format.v6 import BlobInfo
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester
from nydus.utils.paths import not_a_directory

log = logging.getLogger(__name__)

SOURCE_TYPES = {"dir-rafs": "dir", "directory": "dir", "tar-rafs": "tar", "targz-rafs": "tar"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CreateOptions:
    source: str
    source_type: str = "dir-rafs"
    bootstrap: str | None = None
    blob: str | None = None
    blob_dir: str | None = None
    parent_bootstrap: str | None = None
    compressor: Compressor = Compressor.ZSTD
    digester: Digester = Digester.BLAKE3
    chunk_size: int = 0x100000
    whiteout_spec: str = "oci"
    blob_inline_meta: bool = False
    blob_toc: bool = False
    repeatable: bool = False
    prefetch_patterns: list[str] | None = None
    keep_tree: bool = False  # return the merged tree in BuildResult.tree
    chunk_dict: str | None = None  # a dictionary bootstrap: its chunks are referenced
    source_stream: BinaryIO | None = None  # tar-rafs: read the tar from here, not `source`


@dataclass
class BuildResult:
    bootstrap: str | None
    blob_ids: list[str]  # blob table order
    blob_path: str | None = None
    blob_size: int = 0
    blob_id: str | None = None  # id of the blob this build wrote
    trace: dict[str, float] = field(default_factory=dict)
    tree: Node | None = None  # with CreateOptions.keep_tree
    blob_info: BlobInfo | None = None  # this build's blob table entry (None: no data)
    blob_table: list[BlobInfo] = field(default_factory=list)  # the bootstrap's, in order
    blob_file_digest: str | None = None  # "sha256:<hex>" of the blob file written


def load_bootstrap(path: str, what: str = "bootstrap") -> RafsSuper:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BuildError(f"{what} {path}: {exc.strerror}") from exc
    try:
        return open_bootstrap(data)
    except FormatError as exc:
        raise BuildError(f"{what} {path}: {exc}") from exc


def _check_options(o: CreateOptions) -> str:
    kind = SOURCE_TYPES.get(o.source_type)
    if kind is None:
        raise BuildError(
            f"unsupported source type {o.source_type!r} (dir-rafs, tar-rafs or targz-rafs)"
        )
    if not valid_chunk_size(o.chunk_size):
        raise BuildError(
            f"invalid chunk size 0x{o.chunk_size:x}: must be a power of two "
            "between 0x1000 and 0x1000000"
        )
    if o.whiteout_spec not in ("oci", "overlayfs", "none"):
        raise BuildError(f"invalid whiteout spec {o.whiteout_spec!r}")
    if not o.bootstrap and not o.blob_dir and not o.blob_inline_meta:
        raise BuildError("--bootstrap is required (or --blob-dir / --blob-inline-meta)")
    if o.blob_inline_meta and not (o.blob or o.blob_dir):
        raise BuildError("--blob-inline-meta needs --blob or --blob-dir")
    why = not_a_directory(o.blob_dir) if o.blob_dir else None
    if why is not None:
        raise BuildError(f"blob directory {o.blob_dir} {why}")
    for what, out in (("bootstrap", o.bootstrap), ("blob", o.blob)):
        parent = os.path.dirname(os.path.abspath(out)) if out else None
        why = not_a_directory(parent) if parent else None
        if why is not None:
            raise BuildError(f"cannot write {what} {out}: directory {parent} {why}")
    if o.source_stream is not None:
        if kind != "tar":
            raise BuildError("a source stream must be a tar layer (tar-rafs)")
        return kind
    if not os.path.exists(o.source):
        raise BuildError(f"source {o.source} does not exist")
    if not os.access(o.source, os.R_OK):
        raise BuildError(f"source {o.source} is not readable")
    return kind


def create(o: CreateOptions) -> BuildResult:
    kind = _check_options(o)
    parent: RafsSuper | None = None
    lower: Node | None = None
    blobs: list[BlobInfo] = []
    dedup: dict[bytes, Chunk] = {}
    if o.parent_bootstrap:
        parent = load_bootstrap(o.parent_bootstrap, "parent bootstrap")
        if parent.version != 6:
            raise BuildError(
                f"parent bootstrap {o.parent_bootstrap} is RAFS v5; "
                "layers are built as RAFS v6 only"
            )
        if parent.chunk_size != o.chunk_size:
            raise BuildError(
                f"parent bootstrap chunk size 0x{parent.chunk_size:x} differs from "
                f"--chunk-size 0x{o.chunk_size:x}"
            )
        if parent.digester != o.digester:
            raise BuildError(
                f"parent bootstrap uses digester {parent.digester.label}, not {o.digester.label}"
            )
        lower = load_tree(parent)
        blobs = list(parent.blobs)
        for _path, node in lower.walk():
            for c in node.inode.chunks:
                dedup.setdefault(c.digest, c)
    dict_blobs = _add_chunk_dict(o, blobs, dedup)
    blob_index = len(blobs) + len(dict_blobs)
    blob_out = (
        AtomicFile(o.blob)
        if o.blob
        else (AtomicFile(os.path.join(o.blob_dir, ".blob")) if o.blob_dir else None)
    )
    writer = BlobWriter(
        blob_out.open if blob_out else _no_blob,
        blob_index,
        o.compressor,
        o.digester,
        o.chunk_size,
        dedup,
    )
    boot_out = AtomicFile(o.bootstrap) if o.bootstrap else None
    try:
        tree = _read_source(o, kind, writer)
        writer.flush()
        if lower is None:
            strip_whiteouts(tree, o.whiteout_spec)
            root = tree
        else:
            root = apply_layer(lower, tree, o.whiteout_spec)
        if dict_blobs:
            blob_index = _keep_used_dict_blobs(root, blobs, dict_blobs, blob_index)
        bopts = BootstrapOptions(
            o.chunk_size, o.compressor, o.digester, explicit_uid_gid=not o.repeatable
        )
        prefetch = prefetch_nodes(root, o.prefetch_patterns)

        def inline(info: BlobInfo) -> bytes:
            own = replace(info, blob_id=PLACEHOLDER_BLOB_ID, blob_index=blob_index)
            table = blobs + ([own] if writer.chunk_count else [])
            return write_bootstrap(root, table, bopts, prefetch)

        res = writer.finish(
            blob_toc=o.blob_toc, inline_bootstrap=inline if o.blob_inline_meta else None
        )
        blob_id = None
        blob_path = None
        if res is not None:
            blob_id = res.blob_id
            if res.chunk_count:
                blobs.append(replace(res.info, blob_id=blob_id, blob_index=blob_index))
            blob_path = os.path.join(o.blob_dir, blob_id) if (o.blob_dir and not o.blob) else o.blob
        boot = write_bootstrap(root, blobs, bopts, prefetch)
        boot_path = o.bootstrap
        if boot_out is not None:
            boot_out.open().write(boot)
        if res is not None:
            assert blob_out is not None
            blob_out.commit(blob_path)
        elif blob_out is not None and blob_out.stream:
            blob_out.open()  # a FIFO reader waits for its writer: give it an empty stream
            blob_out.commit()
        try:
            if boot_out is not None:
                boot_out.commit()
            elif o.blob_dir and not o.blob_inline_meta:
                import hashlib

                boot_path = os.path.join(o.blob_dir, hashlib.sha256(boot).hexdigest())
                write_atomic(boot_path, boot)
        except BaseException:
            if blob_path and not blob_out.stream:  # type: ignore[union-attr]
                os.unlink(blob_path)
            raise
    except BaseException:
        writer.abort()
        if blob_out is not None:
            blob_out.discard()
        if boot_out is not None:
            boot_out.discard()
        raise
    info = blobs[-1] if res is not None and res.chunk_count else None
    return BuildResult(
        boot_path,
        [b.blob_id for b in blobs],
        blob_path,
        res.size if res else 0,
        blob_id,
        tree=root if o.keep_tree else None,
        blob_info=info,
        blob_table=list(blobs),
        blob_file_digest=res.file_digest if res is not None else None,
    )


def _add_chunk_dict(
    o: CreateOptions, blobs: list[BlobInfo], dedup: dict[bytes, Chunk]
) -> list[BlobInfo]:
    """Offer the dictionary's chunks to dedup, their blobs numbered after `blobs` (a blob the
    parent already has keeps the parent's index); return the dictionary blobs so numbered."""
    if not o.chunk_dict:
        return []
    from nydus.builder.chunkdict import load_chunk_dict

    cd = load_chunk_dict(o.chunk_dict, o.chunk_size, o.digester)
    have = {b.blob_id: b.blob_index for b in blobs}
    extra: list[BlobInfo] = []
    mapping: dict[int, int] = {}
    for b in cd.blobs:
        if b.blob_id in have:
            mapping[b.blob_index] = have[b.blob_id]
        else:
            mapping[b.blob_index] = len(blobs) + len(extra)
            extra.append(replace(b, blob_index=mapping[b.blob_index]))
    for c in cd.chunks:
        dedup.setdefault(c.digest, replace(c, blob_index=mapping[c.blob_index]))
    return extra


def _keep_used_dict_blobs(
    root: Node, blobs: list[BlobInfo], dict_blobs: list[BlobInfo], own_index: int
) -> int:
    """Append to `blobs` the dictionary blobs the tree references, renumbering chunks so the
    blob table has no unused dictionary entry; return this build's own blob index."""
    used: set[int] = set()
    for _path, node in root.walk():
        for c in node.inode.chunks:
            used.add(c.blob_index)
    renumber = {b.blob_index: b.blob_index for b in blobs}
    for b in dict_blobs:
        if b.blob_index in used:
            renumber[b.blob_index] = len(blobs)
            blobs.append(replace(b, blob_index=len(blobs)))
    new_own = len(blobs)
    renumber[own_index] = new_own
    log.info(
        "chunk dict: %d of %d dictionary blobs referenced",
        sum(1 for b in dict_blobs if b.blob_index in used),
        len(dict_blobs),
    )
    _remap_chunks(root, renumber)
    return new_own


def _no_blob() -> NoReturn:
    raise BuildError("file data present but no --blob or --blob-dir given")


def _read_source(o: CreateOptions, kind: str, writer: BlobWriter) -> Node:
    if kind == "dir":
        if not os.path.isdir(o.source):
            raise BuildError(
                f"source {o.source} is not a directory (use --type tar-rafs for a tar layer)"
            )
        return read_dir_tree(o.source, writer)
    if o.source_stream is not None:
        return read_tar_tree(o.source_stream, writer, f"source {o.source}")
    if os.path.isdir(o.source):
        raise BuildError(f"source {o.source} is a directory, not a tar layer")
    try:
        f = open(o.source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise BuildError(f"source {o.source}: {exc.strerror}") from exc
    with f:
        return read_tar_tree(f, writer, f"source {o.source}")


def prefetch_nodes(root: Node, patterns: list[str] | None) -> list[Node]:
    if not patterns:
        return []
    out: list[Node] = []
    for pat in patterns:
        pat = pat.strip()
        if not pat or not pat.startswith("/"):
            continue
        node: Node | None = root
        for part in os.fsencode(pat).split(b"/"):
            if not part:
                continue
            if node is None or node.children is None:
                node = None
                break
            node = node.children.get(part)
        if node is not None and node not in out:
            out.append(node)
    return out


@dataclass
class MergeOptions:
    sources: list[str]
    bootstrap: str
    parent_bootstrap: str | None = None
    blob_digests: list[str] | None = None
    prefetch_patterns: list[str] | None = None
    blob_sizes: list[int] | None = None


@dataclass
class MergeLayer:
    """One layer to stack: its tree (chunk blob indexes local to `blobs`) and its blobs
    (final ids)."""

    tree: Node
    blobs: list[BlobInfo]
    chunk_size: int
    compressor: Compressor
    digester: Digester
    explicit_uid_gid: bool = True


def merge(o: MergeOptions) -> BuildResult:
    """Overlay per-layer bootstraps bottom to top with OCI whiteout rules."""
    if not o.sources:
        raise BuildError("merge needs at least one source bootstrap")
    if o.blob_digests is not None and len(o.blob_digests) != len(o.sources):
        raise BuildError(
            f"--blob-digests has {len(o.blob_digests)} values for {len(o.sources)} sources"
        )
    if o.blob_sizes is not None and len(o.blob_sizes) != len(o.sources):
        raise BuildError(
            f"--blob-sizes has {len(o.blob_sizes)} values for {len(o.sources)} sources"
        )
    named: list[tuple[str | None, int | None, RafsSuper]] = []
    if o.parent_bootstrap:
        named.append((None, None, load_bootstrap(o.parent_bootstrap, "parent bootstrap")))
    for i, src in enumerate(o.sources):
        override = None
        if o.blob_digests is not None:
            override = o.blob_digests[i].removeprefix("sha256:")
        else:
            stem = os.path.splitext(os.path.basename(src))[0].removeprefix("sha256:")
            if _HEX64.match(stem):
                override = stem
        size = o.blob_sizes[i] if o.blob_sizes is not None else None
        named.append((override, size, load_bootstrap(src, "source bootstrap")))
    layers = []
    for override, size, sb in named:
        if sb.version != 6:
            raise BuildError("merge supports RAFS v6 bootstraps only")
        blobs = []
        for b in sb.blobs:
            bid = b.blob_id
            if bid == PLACEHOLDER_BLOB_ID or b.features & BlobFeatures.INLINED_FS_META:
                if override is None:
                    raise BuildError(
                        "a source bootstrap has a placeholder blob id; name the "
                        "file by the blob digest or pass --blob-digests"
                    )
                bid = override
                if size is not None:
                    b = replace(b, compressed_size=size)
            blobs.append(replace(b, blob_id=bid))
        layers.append(
            MergeLayer(
                load_tree(sb),
                blobs,
                sb.chunk_size,
                sb.compressor,
                sb.digester,
                bool(sb.flags & SuperFlags.EXPLICIT_UID_GID),
            )
        )
    return merge_layers(layers, o.bootstrap, o.prefetch_patterns)


def merge_layers(
    layers: list[MergeLayer], bootstrap: str, prefetch_patterns: list[str] | None = None
) -> BuildResult:
    """Stack layer trees with OCI whiteouts (modifying them) and write one bootstrap whose
    blob table lists the referenced blobs in BFS first-reference order."""
    if not layers:
        raise BuildError("nothing to merge")
    m = Merger()
    for layer in layers:
        m.add(layer)
    return m.write(bootstrap, prefetch_patterns)


class Merger:
    """Layers stacked one by one (their trees are modified); `write()` may be called after
    any of them, so a merge of all layers but the last and one of all cost one pass."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.infos: dict[str, BlobInfo] = {}
        self.root: Node | None = None
        self.top: MergeLayer | None = None

    def add(self, layer: MergeLayer) -> None:
        if self.top is not None and layer.chunk_size != self.top.chunk_size:
            raise BuildError("source bootstraps have different chunk sizes")
        mapping = []
        for b in layer.blobs:
            if b.blob_id not in self.infos:
                self.infos[b.blob_id] = replace(
                    b, features=b.features & ~BlobFeatures.INLINED_FS_META
                )
                self.ids.append(b.blob_id)
            mapping.append(self.ids.index(b.blob_id))
        if any(i != n for n, i in enumerate(mapping)):
            _remap_chunks(layer.tree, dict(enumerate(mapping)))
        if self.root is None:
            strip_whiteouts(layer.tree, "oci")
            self.root = layer.tree
        else:
            apply_layer(self.root, layer.tree, "oci")
        self.top = layer

    def write(self, bootstrap: str, prefetch_patterns: list[str] | None = None) -> BuildResult:
        root, top = self.root, self.top
        if root is None or top is None:
            raise BuildError("nothing to merge")
        # blob table in order of first reference by a BFS walk; unreferenced blobs dropped
        order: dict[int, int] = {}
        for node in _bfs_nodes(root):
            for c in node.inode.chunks:
                if c.blob_index not in order:
                    order[c.blob_index] = len(order)
        blob_map = [order.get(i, -1) for i in range(len(self.ids))]
        blobs = [replace(self.infos[self.ids[old]], blob_index=new) for old, new in order.items()]
        bopts = BootstrapOptions(
            top.chunk_size, top.compressor, top.digester, top.explicit_uid_gid, blob_map
        )
        boot = write_bootstrap(root, blobs, bopts, prefetch_nodes(root, prefetch_patterns))
        write_atomic(bootstrap, boot)
        return BuildResult(bootstrap, [b.blob_id for b in blobs])


def _remap_chunks(root: Node, renumber: dict[int, int]) -> None:
    cache: dict[int, Chunk] = {}
    seen: set[int] = set()
    for node in _bfs_nodes(root):
        if id(node.inode) in seen:
            continue
        seen.add(id(node.inode))
        node.inode.chunks = [_renumber(c, renumber, cache) for c in node.inode.chunks]


def _renumber(c: Chunk, renumber: dict[int, int], cache: dict[int, Chunk]) -> Chunk:
    hit = cache.get(id(c))
    if hit is None:
        # the constructor, not dataclasses.replace: this runs for every chunk of a merge
        hit = cache[id(c)] = Chunk(
            c.digest,
            renumber[c.blob_index],
            c.ci_index,
            c.uncompressed_offset,
            c.uncompressed_size,
            c.compressed_offset,
            c.compressed_size,
            c.compressed,
        )
    return hit


def _bfs_nodes(root: Node) -> Iterator[Node]:
    """Every node, breadth first, children sorted (hard-linked inodes once per name)."""
    level = [root]
    while level:
        nxt: list[Node] = []
        for node in level:
            yield node
            if node.children is not None:
                nxt.extend(node.children[k] for k in sorted(node.children))
        level = nxt
