"""`nydus-image optimize`: move the chunks of the files a workload reads first into one new
blob, in that order, and point the bootstrap (chunk indexes, prefetch table) at it.

The new blob holds each listed file's chunks in list order, each distinct chunk once, with
the compressed bytes copied from the source blobs (checked against their digests on the
way, recompressed only when a source blob uses another compressor). Every file whose chunk
moved is repointed, not only the listed one, so a shared chunk is fetched from one place.
Its blob table entry carries IS_SEPARATED_WITH_PREFETCH_FILES, like upstream's.

The list is upstream's `--prefetch-files`: one absolute path per line, or the JSON form
`{"version": "v1", "files": [{"path": "/p", "ranges": [[offset, length], ...]}]}` whose
ranges keep only the chunks they touch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nydus.builder.blob import BlobWriter
from nydus.builder.bootstrap import BootstrapOptions, write_bootstrap
from nydus.builder.build import load_bootstrap, prefetch_nodes
from nydus.builder.output import AtomicFile
from nydus.builder.overlay import load_tree
from nydus.builder.tree import Chunk, Node
from nydus.errors import BuildError, FormatError, NydusError
from nydus.format.constants import PLACEHOLDER_BLOB_ID, BlobFeatures, SuperFlags
from nydus.format.rafs import RafsSuper
from nydus.format.v6 import BlobInfo
from nydus.utils.compress import Compressor, compress_if_smaller
from nydus.utils.digest import sha256_file
from nydus.utils.ranges import merge_adjacent

__all__ = [
    "BlobReader",
    "OptimizeResult",
    "PrefetchEntry",
    "blob_dir_reader",
    "optimize",
    "parse_prefetch_list",
    "read_prefetch_list",
]

log = logging.getLogger(__name__)

#: reads `size` bytes at `offset` of the blob named `blob_id`
BlobReader = Callable[[str, int, int], bytes]
#: the largest source range read at once (chunks adjacent in a source blob are merged)
READ_MERGE = 8 << 20


@dataclass(frozen=True, slots=True)
class PrefetchEntry:
    path: str
    ranges: tuple[tuple[int, int], ...] | None = None  # (offset, length); None: whole file


@dataclass
class OptimizeResult:
    bootstrap: str
    blob_id: str
    blob_path: str
    blob_size: int
    blob_ids: list[str]  # blob table order, the new blob last
    files: list[str] = field(default_factory=list)  # listed files found with data
    chunks: int = 0  # chunks in the new blob
    skipped: list[str] = field(default_factory=list)  # listed paths missing or without data


def parse_prefetch_list(text: str, what: str = "prefetch list") -> list[PrefetchEntry]:
    """Paths one per line (blank lines and relative paths skipped), or upstream's JSON."""
    if text.lstrip().startswith("{"):
        return _parse_json(text, what)
    out = []
    for line in text.splitlines():
        p = line.strip()
        if not p:
            continue
        if not p.startswith("/"):
            log.warning("%s: skipping %r, not an absolute path", what, p)
            continue
        out.append(PrefetchEntry(p))
    return out


def _parse_json(text: str, what: str) -> list[PrefetchEntry]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BuildError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != "v1":
        raise BuildError(f'{what}: unsupported prefetch file version (want "version": "v1")')
    files = doc.get("files")
    if not isinstance(files, list):
        raise BuildError(f'{what}: "files" must be a list')
    out = []
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("path"), str):
            raise BuildError(f'{what}: files[{i}] needs a "path" string')
        path = f["path"]
        if not path.startswith("/"):
            log.warning("%s: skipping %r, not an absolute path", what, path)
            continue
        ranges = f.get("ranges")
        if ranges is not None:
            if not isinstance(ranges, list) or not all(
                isinstance(r, list)
                and len(r) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r)
                for r in ranges
            ):
                raise BuildError(
                    f"{what}: files[{i}].ranges must be [[offset, length], ...] of integers"
                )
            out.append(PrefetchEntry(path, tuple((r[0], r[1]) for r in ranges)))
        else:
            out.append(PrefetchEntry(path))
    return out


def read_prefetch_list(path: str) -> tuple[str, list[PrefetchEntry]]:
    """The text of a prefetch-files file and its entries; BuildError if unreadable or if it
    lists no absolute path."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise BuildError(f"cannot read prefetch files {path}: {why}") from None
    entries = parse_prefetch_list(text, path)
    if not entries:
        raise BuildError(f"prefetch files {path} lists no absolute path")
    return text, entries


def blob_dir_reader(blob_dir: str | None, blob_file: str | None = None) -> BlobReader:
    """Reads source blobs from files: `<blob_dir>/<blob id>`, or the one `blob_file`."""

    def read(blob_id: str, offset: int, size: int) -> bytes:
        path = blob_file or os.path.join(blob_dir or ".", blob_id)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise BuildError(f"cannot read blob {blob_id} ({path}): {exc.strerror}") from exc
        if len(data) != size:
            raise BuildError(
                f"blob {blob_id} ({path}) is truncated: wanted {size} bytes at {offset}, "
                f"got {len(data)}"
            )
        return data

    return read


def _find(root: Node, path: str) -> Node | None:
    node: Node | None = root
    for part in os.fsencode(path).split(b"/"):
        if not part or part == b".":
            continue
        if node is None or node.children is None:
            return None
        node = node.children.get(part)
    return node


def _touches(c: Chunk, pos: int, chunk_size: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    lo = pos * chunk_size
    hi = lo + c.uncompressed_size
    return any(off < hi and off + length > lo for off, length in ranges if length > 0)


def _select(
    root: Node, entries: list[PrefetchEntry], chunk_size: int
) -> tuple[list[Chunk], list[str], list[str]]:
    """Distinct source chunks to move, in list order; files found; paths skipped."""
    order: list[Chunk] = []
    seen: set[tuple[int, int]] = set()
    files: list[str] = []
    skipped: list[str] = []
    for e in entries:
        node = _find(root, e.path)
        if node is None or not node.inode.is_reg or not node.inode.chunks:
            skipped.append(e.path)
            continue
        took = False
        for pos, c in enumerate(node.inode.chunks):
            if e.ranges is not None and not _touches(c, pos, chunk_size, e.ranges):
                continue
            took = True
            key = (c.blob_index, c.ci_index)
            if key not in seen:
                seen.add(key)
                order.append(c)
        if took:
            files.append(e.path)
        else:
            skipped.append(e.path)
    return order, files, skipped


def _read_chunks(
    chunks: list[Chunk], blobs: list[BlobInfo], read: BlobReader
) -> dict[tuple[int, int], bytes]:
    """Stored bytes of each chunk; chunks adjacent in a source blob are read together."""
    by_blob: dict[int, list[Chunk]] = {}
    for c in chunks:
        by_blob.setdefault(c.blob_index, []).append(c)
    out: dict[tuple[int, int], bytes] = {}
    for bi, cs in by_blob.items():
        if bi >= len(blobs):
            raise BuildError(f"a chunk refers to blob {bi}; the bootstrap has {len(blobs)}")
        blob_id = blobs[bi].blob_id
        if blob_id == PLACEHOLDER_BLOB_ID or not blob_id:
            raise BuildError(f"blob {bi} has no id in the bootstrap; cannot read its chunks")
        for group in merge_adjacent(
            cs, lambda c: (c.compressed_offset, c.compressed_offset + c.compressed_size), READ_MERGE
        ):
            start = group[0].compressed_offset
            end = max(c.compressed_offset + c.compressed_size for c in group)
            try:
                raw = read(blob_id, start, end - start)
            except BuildError:
                raise
            except NydusError as exc:
                raise BuildError(f"cannot read blob {blob_id}: {exc}") from exc
            if len(raw) != end - start:
                raise BuildError(f"blob {blob_id}: short read at {start}")
            for c in group:
                lo = c.compressed_offset - start
                out[(c.blob_index, c.ci_index)] = raw[lo : lo + c.compressed_size]
    return out


def _stored_for(
    c: Chunk, raw: bytes, src: Compressor, dst: Compressor, sb: RafsSuper, blob_id: str
) -> tuple[bytes, bool]:
    """Check a copied chunk against its digest; the bytes to store in the new blob."""
    try:
        data = src.decompress(raw, c.uncompressed_size) if c.compressed else raw
    except FormatError as exc:
        raise BuildError(f"blob {blob_id} chunk {c.ci_index}: {exc}") from exc
    if len(data) != c.uncompressed_size or sb.digester.digest(data) != c.digest:
        raise BuildError(
            f"blob {blob_id} chunk {c.ci_index}: data does not match its digest "
            "(wrong or corrupt source blob)"
        )
    if not c.compressed or src is dst:
        return raw, c.compressed
    return compress_if_smaller(dst, data)


def optimize(
    bootstrap: str,
    entries: list[PrefetchEntry],
    read: BlobReader,
    output_bootstrap: str,
    output_blob_dir: str,
) -> OptimizeResult:
    """Write the prefetch blob into `output_blob_dir` (named by its sha256) and the new
    bootstrap to `output_bootstrap`; nothing is left behind on failure."""
    sb = load_bootstrap(bootstrap)
    if sb.version != 6:
        raise BuildError(f"bootstrap {bootstrap} is RAFS v{sb.version}; optimize needs RAFS v6")
    if not os.path.isdir(output_blob_dir):
        raise BuildError(f"output blob directory {output_blob_dir} does not exist")
    parent = os.path.dirname(os.path.abspath(output_bootstrap))
    if not os.path.isdir(parent):
        raise BuildError(f"cannot write bootstrap {output_bootstrap}: {parent} does not exist")
    blobs = list(sb.blobs)
    if not blobs:
        raise BuildError(f"bootstrap {bootstrap} has no blobs: nothing to optimize")
    try:
        root = load_tree(sb)
    except FormatError as exc:
        raise BuildError(f"bootstrap {bootstrap}: {exc}") from exc
    order, files, skipped = _select(root, entries, sb.chunk_size)
    for p in skipped:
        log.warning("prefetch file %s is not a regular file with data in the image; skipped", p)
    if not order:
        raise BuildError(
            f"none of the {len(entries)} listed paths is a file with data in the image"
        )
    raws = _read_chunks(order, blobs, read)
    compressor = Compressor(blobs[0].compressor)
    new_index = len(blobs)
    tmp = AtomicFile(os.path.join(output_blob_dir, ".prefetch-blob"))
    writer = BlobWriter(tmp.open, new_index, compressor, sb.digester, sb.chunk_size, {})
    moved: dict[tuple[int, int], Chunk] = {}
    try:
        for c in order:
            key = (c.blob_index, c.ci_index)
            src_info = blobs[c.blob_index]
            stored, compressed = _stored_for(
                c, raws[key], Compressor(src_info.compressor), compressor, sb, src_info.blob_id
            )
            moved[key] = writer.add_stored(c.digest, stored, c.uncompressed_size, compressed)
        res = writer.finish(blob_toc=True, inline_bootstrap=None)
        assert res is not None and tmp.fh is not None and tmp.tmp is not None
        tmp.fh.flush()
        blob_id, size = sha256_file(tmp.tmp)
        blob_path = os.path.join(output_blob_dir, blob_id)
        tmp.commit(blob_path)
    except BaseException:
        writer.abort()
        tmp.discard()
        raise
    try:
        _repoint(root, moved)
        info = replace(
            res.info,
            blob_id=blob_id,
            compressed_size=size,
            features=res.info.features | BlobFeatures.IS_SEPARATED_WITH_PREFETCH_FILES,
        )
        table = [*blobs, info]
        bopts = BootstrapOptions(
            sb.chunk_size,
            sb.compressor,
            sb.digester,
            explicit_uid_gid=bool(sb.flags & SuperFlags.EXPLICIT_UID_GID),
        )
        boot = write_bootstrap(root, table, bopts, prefetch_nodes(root, files))
        out = AtomicFile(output_bootstrap)
        try:
            out.open().write(boot)
            out.commit()
        except BaseException:
            out.discard()
            raise
    except BaseException:
        os.unlink(blob_path)
        raise
    return OptimizeResult(
        output_bootstrap,
        blob_id,
        blob_path,
        size,
        [b.blob_id for b in table],
        files,
        len(moved),
        skipped,
    )


def _repoint(root: Node, moved: dict[tuple[int, int], Chunk]) -> None:
    seen: set[int] = set()
    for _path, node in root.walk():
        d = node.inode
        if not d.chunks or id(d) in seen:
            continue
        seen.add(id(d))
        d.chunks = [moved.get((c.blob_index, c.ci_index), c) for c in d.chunks]
