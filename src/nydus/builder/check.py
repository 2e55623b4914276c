"""`nydus-image check`: validate every structure of a bootstrap and summarise it."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from nydus.errors import FormatError
from nydus.format.constants import BLOCK_SIZE, blob_features_names, super_flags_names
from nydus.format.rafs import RafsSuper, walk
from nydus.format.v6 import BlobInfo


@dataclass
class CheckReport:
    version: int
    flags: int
    inodes: int
    entries: int
    blobs: list[BlobInfo]

    def summary_lines(self) -> list[str]:
        lines = ["RAFS filesystem metadata is valid, referenced data blobs: "]
        for i, b in enumerate(self.blobs):
            feats = "|".join(blob_features_names(b.features)) or "0"
            lines.append(
                f"\t {i}: {b.blob_id}, compressed size {b.compressed_size}, "
                f"uncompressed size {b.uncompressed_size}, chunk size: {b.chunk_size}, "
                f"chunk count: {b.chunk_count}, features: {feats}"
            )
        return lines

    @property
    def features_line(self) -> str:
        return "RAFS features: " + " ".join(super_flags_names(self.flags))


def check_bootstrap(sb: RafsSuper) -> CheckReport:
    """Walk the whole tree, decoding every record; raise FormatError on the first fault."""
    seen: set[int] = set()
    entries = 0
    for path, ino in walk(sb):
        entries += 1
        a = sb.attr(ino)
        where = f"{path.decode(errors='replace')} (inode {ino})"
        if ino in seen:
            if not a.is_reg:
                raise FormatError(f"{where}: a non-regular inode is linked twice")
            continue
        seen.add(ino)
        fmt = stat.S_IFMT(a.mode)
        if fmt not in (
            stat.S_IFREG,
            stat.S_IFDIR,
            stat.S_IFLNK,
            stat.S_IFCHR,
            stat.S_IFBLK,
            stat.S_IFIFO,
            stat.S_IFSOCK,
        ):
            raise FormatError(f"{where}: invalid file mode 0o{a.mode:o}")
        sb.xattrs(ino)
        if a.is_symlink:
            if not sb.readlink(ino):
                raise FormatError(f"{where}: empty symlink target")
        elif a.is_reg:
            chunks = sb.chunks(ino)
            expect = (a.size + sb.chunk_size - 1) // sb.chunk_size
            if len(chunks) != expect:
                raise FormatError(f"{where}: {len(chunks)} chunks for {a.size} bytes")
            for c in chunks:
                blob = sb.blobs[c.blob_index]
                if sb.version == 6 and c.ci_index >= blob.chunk_count:
                    raise FormatError(
                        f"{where}: chunk index {c.ci_index} beyond the "
                        f"{blob.chunk_count} chunks of blob {blob.blob_id}"
                    )
                if c.uncompressed_size is not None:
                    end = c.uncompressed_offset + c.uncompressed_size
                    if sb.version == 6 and end > blob.uncompressed_size:
                        raise FormatError(f"{where}: chunk beyond blob {blob.blob_id}")
                    if sb.version == 6 and c.uncompressed_offset % BLOCK_SIZE:
                        raise FormatError(f"{where}: chunk offset not 4 KiB aligned")
        elif a.is_dir:
            names = [e.name for e in sb.readdir(ino)]
            if len(set(names)) != len(names):
                raise FormatError(f"{where}: duplicate directory entries")
            if ino != sb.root_ino and not sb.attr(sb.parent(ino) or sb.root_ino).is_dir:
                raise FormatError(f"{where}: its parent ('..') is not a directory")
    for ino in sb.prefetch_inos():
        sb.attr(ino)  # a prefetch table entry names an inode of the image
    table = sb.chunk_table()
    if sb.version == 6:
        keys = [(c.digest, c.blob_index) for c in table]
        if keys != sorted(keys):
            raise FormatError("chunk table is not sorted by digest")
        for rec in table:
            if rec.blob_index >= len(sb.blobs):
                raise FormatError(f"chunk table refers to blob {rec.blob_index}")
    return CheckReport(sb.version, sb.flags, len(seen), entries, list(sb.blobs))
