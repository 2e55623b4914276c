"""Chunk dictionaries: `nydus-image chunkdict generate` and loading `--chunk-dict` for builds.

A dictionary is an ordinary RAFS v6 bootstrap whose files reference chunks of existing
blobs, so any reader (our nydusd, upstream's, the kernel with the blobs' uncompressed views)
can mount it: `generate` writes one directory per blob (named by the blob id) holding one
file per chunk (named by the chunk digest), each file exactly that chunk. A build given the
dictionary references a chunk found there instead of storing it, and its blob table gains
the dictionary blobs it uses.

`generate` keeps the chunks that at least `min_images` (default 2) of the source images hold
(a chunk is its digest and uncompressed size); a chunk stored in several blobs is taken from
the first source that has it. Upstream's generator reads the same facts from an SQLite
database (`--database`) that its nydusify fills; ours reads the bootstraps themselves, so no
database is needed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, replace

from nydus.builder.bootstrap import BootstrapOptions, write_bootstrap
from nydus.builder.build import load_bootstrap
from nydus.builder.output import write_atomic
from nydus.builder.overlay import load_tree
from nydus.builder.tree import Chunk, InodeData, Node
from nydus.errors import BuildError
from nydus.format.constants import BlobFeatures
from nydus.format.rafs import RafsSuper
from nydus.format.v6 import BlobInfo
from nydus.utils.digest import Digester

__all__ = ["ChunkDict", "GenerateResult", "generate_chunk_dict", "load_chunk_dict", "parse_arg"]

log = logging.getLogger(__name__)

Key = tuple[bytes, int]  # (digest, uncompressed size)


def parse_arg(arg: str) -> str:
    """The path of `--chunk-dict bootstrap=PATH` (or a bare PATH)."""
    kind, sep, path = arg.partition("=")
    if not sep:
        return arg
    if kind != "bootstrap" or not path:
        raise BuildError(f"invalid --chunk-dict {arg!r} (bootstrap=PATH)")
    return path


@dataclass
class ChunkDict:
    """The chunks of a dictionary; their blob indexes point into `blobs`."""

    path: str
    blobs: list[BlobInfo]
    chunks: list[Chunk]


def _chunks_of(root: Node) -> list[Chunk]:
    out: list[Chunk] = []
    seen: set[int] = set()
    for _path, node in root.walk():
        if node.inode.is_reg and id(node.inode) not in seen:
            seen.add(id(node.inode))
            out.extend(node.inode.chunks)
    return out


def load_chunk_dict(path: str, chunk_size: int, digester: Digester) -> ChunkDict:
    sb = load_bootstrap(path, "chunk dict bootstrap")
    if sb.version != 6:
        raise BuildError(f"chunk dict {path} is RAFS v5; a dictionary must be RAFS v6")
    if sb.chunk_size != chunk_size:
        raise BuildError(
            f"chunk dict {path} has chunk size 0x{sb.chunk_size:x}, the build 0x{chunk_size:x}"
        )
    if sb.digester != digester:
        raise BuildError(
            f"chunk dict {path} uses digester {sb.digester.label}, the build {digester.label}"
        )
    blobs = [_dict_blob(b) for b in sb.blobs]
    chunks = _chunks_of(load_tree(sb))
    log.info("chunk dict %s: %d chunks in %d blobs", path, len(chunks), len(blobs))
    return ChunkDict(path, blobs, chunks)


def _dict_blob(b: BlobInfo) -> BlobInfo:
    # the dictionary's blobs hold no bootstrap of the images that reference them
    return replace(b, features=b.features & ~BlobFeatures.INLINED_FS_META)


@dataclass
class GenerateResult:
    bootstrap: str
    blob_ids: list[str]
    chunks: int
    uncompressed_bytes: int
    compressed_bytes: int


def generate_chunk_dict(
    sources: list[str],
    output: str | None,
    blob_dir: str | None = None,
    min_images: int = 2,
) -> GenerateResult:
    if len(sources) < 1:
        raise BuildError("chunkdict generate needs at least one source bootstrap")
    sbs: list[tuple[str, RafsSuper]] = []
    for src in sources:
        sb = load_bootstrap(src, "source bootstrap")
        if sb.version != 6:
            raise BuildError(f"source bootstrap {src} is RAFS v5 (RAFS v6 only)")
        if sbs and (sb.chunk_size, sb.digester) != (sbs[0][1].chunk_size, sbs[0][1].digester):
            raise BuildError(
                f"source bootstrap {src}: chunk size or digester differs from {sbs[0][0]}"
            )
        sbs.append((src, sb))
    first = sbs[0][1]
    count: dict[Key, int] = {}
    where: dict[Key, tuple[Chunk, BlobInfo]] = {}
    for _src, sb in sbs:
        distinct: dict[Key, Chunk] = {}
        for c in _chunks_of(load_tree(sb)):
            distinct.setdefault((c.digest, c.uncompressed_size), c)
        for key, c in distinct.items():
            count[key] = count.get(key, 0) + 1
            where.setdefault(key, (c, sb.blobs[c.blob_index]))
    shared = [k for k, n in count.items() if n >= min_images]
    blobs: list[BlobInfo] = []
    index: dict[str, int] = {}
    root = Node.directory(b"", InodeData(mode=stat.S_IFDIR | 0o755))
    assert root.children is not None
    for key in sorted(shared, key=lambda k: (where[k][1].blob_id, where[k][0].ci_index)):
        chunk, blob = where[key]
        if blob.blob_id not in index:
            index[blob.blob_id] = len(blobs)
            blobs.append(replace(_dict_blob(blob), blob_index=len(blobs)))
            name = blob.blob_id.encode()
            root.children[name] = Node.directory(name, InodeData(mode=stat.S_IFDIR | 0o755))
        bdir = root.children[blob.blob_id.encode()]
        assert bdir.children is not None
        name = key[0].hex().encode()
        bdir.children[name] = Node(
            name,
            InodeData(
                mode=stat.S_IFREG | 0o444,
                size=chunk.uncompressed_size,
                chunks=[replace(chunk, blob_index=index[blob.blob_id])],
            ),
        )
    opts = BootstrapOptions(first.chunk_size, first.compressor, first.digester, True)
    boot = write_bootstrap(root, blobs, opts, [])
    if output is None:
        if blob_dir is None:
            raise BuildError("chunkdict generate needs --bootstrap or --blob-dir")
        output = os.path.join(blob_dir, hashlib.sha256(boot).hexdigest())
    write_atomic(output, boot)
    usize = sum(where[k][0].uncompressed_size for k in shared)
    csize = sum(where[k][0].compressed_size for k in shared)
    log.info(
        "chunk dict %s: %d chunks (%d bytes, %d compressed) shared by >= %d of %d images, "
        "in %d blobs",
        output,
        len(shared),
        usize,
        csize,
        min_images,
        len(sbs),
        len(blobs),
    )
    return GenerateResult(output, [b.blob_id for b in blobs], len(shared), usize, csize)
