"""`nydus-image stat`: deduplication statistics of one image, of all images in a directory,
and of a target image against them, from the bootstraps alone (the chunk table gives each
chunk's sizes; no blob is read).

Counted per image as upstream does: directories, files, symlinks, chunks, file bytes, the
4 KiB padding of file tails, compressed and uncompressed chunk bytes, a histogram of file
sizes (bit length) and of chunk counts at chunk sizes 4 KiB..1 MiB. A chunk is identified
by its digest and uncompressed size; each image's distinct chunks are its "own" chunks.
Across the base images (`-D`) the distinct chunks of all of them are the "dedup" chunks, and
for each threshold t = 1..20 the table says what the set would take if the chunks found in
at least t images went into one shared dictionary. A target (`-T`) counts which of its
distinct chunks the base images already hold ("referenced") and which it must store itself
("owned").
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from nydus.builder.build import load_bootstrap
from nydus.builder.output import write_atomic
from nydus.errors import BuildError, FormatError
from nydus.format.constants import EROFS_SUPER_OFFSET
from nydus.format.rafs import RafsSuper, detect_version, walk

__all__ = ["ImageInfo", "ImageStat", "stat_images"]

Key = tuple[bytes, int]  # (chunk digest, uncompressed size)
THRESHOLDS = 20


@dataclass
class ImageInfo:
    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    chunks: int = 0
    file_size: int = 0
    comp_size: int = 0
    uncomp_size: int = 0
    padding_size: int = 0
    chunk_sizes: list[int] = field(default_factory=lambda: [0] * 9)
    file_sizes: list[int] = field(default_factory=lambda: [0] * 45)
    dedup_chunks: int = 0
    dedup_comp_size: int = 0
    dedup_uncomp_size: int = 0
    own_chunks: int = 0
    own_comp_size: int = 0
    own_uncomp_size: int = 0
    ref_chunks: int = 0
    ref_comp_size: int = 0
    ref_uncomp_size: int = 0

    def lines(self) -> list[str]:
        out = [
            f"Directories:            {self.dirs}",
            f"Files:                  {self.files}",
            f"Symlinks:               {self.symlinks}",
            f"Chunks:                 {self.chunks}",
            f"File Size:              {self.file_size}",
            f"Padding Size:           {self.padding_size}",
            f"Uncompressed Size:      {self.uncomp_size}",
            f"Compressed Size:        {self.comp_size}",
            "",
            "File Size Bits:\t\tFile Count:",
        ]
        out += [f"{i}:\t\t\t{n}" for i, n in enumerate(self.file_sizes)]
        out += ["", "Chunk Size Bits:\tChunk Count:"]
        out += [f"{12 + i}:\t\t\t{n}" for i, n in enumerate(self.chunk_sizes)]
        out += [
            "",
            f"Raw Content Size:\t{self.file_size}",
            f"Comp Content Size:\t{self.comp_size}",
            f"Raw Chunk Count:\t{self.chunks}",
            f"Dedup Comp Size:\t{self.dedup_comp_size}",
            f"Dedup Uncomp Size:\t{self.dedup_uncomp_size}",
            f"Dedup Chunk Count:\t{self.dedup_chunks}",
            f"Owned Comp Size:\t{self.own_comp_size}",
            f"Owned Uncomp Size:\t{self.own_uncomp_size}",
            f"Owned Chunk Count:\t{self.own_chunks}",
            f"Referenced Comp Size:\t{self.ref_comp_size}",
            f"Referenced Uncomp Size:\t{self.ref_uncomp_size}",
            f"Referenced Chunk Count:\t{self.ref_chunks}",
        ]
        return out


@dataclass
class DedupInfo:
    raw_chunks: int = 0
    dedup_chunks: int = 0
    comp_content_size: int = 0
    comp_base_size: int = 0
    comp_image_size: int = 0
    uncomp_content_size: int = 0
    uncomp_base_size: int = 0
    uncomp_image_size: int = 0


@dataclass
class PerImage:
    """A short line per base image."""

    path: str
    files: int
    file_size: int
    chunks: int
    unique_chunks: int
    comp_size: int  # of its distinct chunks


@dataclass
class ImageStat:
    dedup_enabled: bool = False
    target_enabled: bool = False
    base_image: ImageInfo = field(default_factory=ImageInfo)
    target_image: ImageInfo = field(default_factory=ImageInfo)
    images: list[PerImage] = field(default_factory=list)
    # chunk -> (compressed size, number of base images holding it)
    _dict: dict[Key, list[int]] = field(default_factory=dict)
    dedup_info: list[DedupInfo] = field(default_factory=list)

    def add(self, path: str, sb: RafsSuper, is_base: bool) -> None:
        image = self.base_image if is_base else self.target_image
        distinct: dict[Key, int] = {}
        seen: set[int] = set()
        files = size = nchunks = 0
        for _p, ino in walk(sb):
            a = sb.attr(ino)
            if a.is_reg:
                image.files += 1
                files += 1
                if ino in seen:
                    continue
                seen.add(ino)
                image.file_sizes[min(a.size.bit_length(), 44)] += 1
                image.file_size += a.size
                size += a.size
                image.padding_size += -a.size % 4096
                refs = sb.chunks(ino)
                image.chunks += len(refs)
                nchunks += len(refs)
                for r in refs:
                    usize = r.uncompressed_size or 0
                    csize = r.compressed_size or 0
                    image.comp_size += csize
                    image.uncomp_size += usize
                    if r.digest is not None:
                        distinct.setdefault((r.digest, usize), csize)
                for i in range(9):
                    image.chunk_sizes[i] += (a.size + (1 << (12 + i)) - 1) >> (12 + i)
            elif a.is_dir:
                image.dirs += 1
            elif a.is_symlink:
                image.symlinks += 1
        if is_base:
            for key, csize in distinct.items():
                image.own_chunks += 1
                image.own_comp_size += csize
                image.own_uncomp_size += key[1]
                hit = self._dict.get(key)
                if hit is None:
                    self._dict[key] = [csize, 1]
                else:
                    hit[1] += 1
            self.images.append(
                PerImage(path, files, size, nchunks, len(distinct), sum(distinct.values()))
            )
        else:
            for key, csize in distinct.items():
                if key in self._dict:
                    image.ref_chunks += 1
                    image.ref_comp_size += csize
                    image.ref_uncomp_size += key[1]
                else:
                    image.own_chunks += 1
                    image.own_comp_size += csize
                    image.own_uncomp_size += key[1]

    def finalize(self) -> None:
        self.base_image.uncomp_size += self.base_image.padding_size
        if self.target_enabled:
            self.target_image.uncomp_size += self.target_image.padding_size
        if not self.dedup_enabled:
            return
        self.dedup_info = [DedupInfo() for _ in range(THRESHOLDS)]
        for (_digest, usize), (csize, count) in self._dict.items():
            for t, info in enumerate(self.dedup_info, start=1):
                info.raw_chunks += count
                info.comp_content_size += count * csize
                info.uncomp_content_size += count * usize
                if count >= t:  # shared by at least t images: stored once, in the base
                    info.dedup_chunks += 1
                    info.comp_base_size += csize
                    info.uncomp_base_size += usize
                else:  # stays in each image holding it
                    info.dedup_chunks += count
                    info.comp_image_size += count * csize
                    info.uncomp_image_size += count * usize
            self.base_image.dedup_chunks += 1
            self.base_image.dedup_comp_size += csize
            self.base_image.dedup_uncomp_size += usize

    def to_json(self) -> dict[str, Any]:
        return {
            "dedup_enabled": self.dedup_enabled,
            "target_enabled": self.target_enabled,
            "base_image": asdict(self.base_image),
            "target_image": asdict(self.target_image),
            "images": [asdict(i) for i in self.images],
            "dedup_info": [asdict(i) for i in self.dedup_info],
        }

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.target_enabled:
            out += ["Target Image Statistics:", "", *self.target_image.lines(), ""]
            t = self.target_image
            own_ref = t.own_comp_size + t.ref_comp_size
            out.append(
                f"Dedup against the base would save {t.ref_comp_size} of {own_ref} "
                f"compressed bytes ({_pct(t.ref_comp_size, own_ref)})"
            )
            out.append("")
        out += ["", "Base Image Statistics:", "", *self.base_image.lines()]
        if len(self.images) > 1:
            out += ["", "Image:\tFiles:\tFile Size:\tChunks:\tUnique Chunks:\tUnique Comp Size:"]
            out += [
                f"{i.path}\t{i.files}\t{i.file_size}\t{i.chunks}\t{i.unique_chunks}\t{i.comp_size}"
                for i in self.images
            ]
        if self.dedup_enabled:
            b = self.base_image
            out += [
                "",
                f"Dedup Ratio:\t\t{_ratio(b.own_comp_size, b.dedup_comp_size)} "
                f"(distinct chunks of each image {b.own_comp_size} compressed bytes, of all "
                f"images {b.dedup_comp_size})",
                "",
                "Chunk Deduplication Statistics:",
                "Global Dedup Thresh:\tRaw Chunks:\tDedup Chunks:\tComp Content Size:\t"
                "Comp Base Size:\tComp Image Size:\tUncomp Content Size:\tUncomp Base Size\t"
                "Uncomp Image Size",
            ]
            for thresh, d in enumerate(self.dedup_info, start=1):
                if d.dedup_chunks == 0:
                    break
                cols = (
                    d.raw_chunks,
                    d.dedup_chunks,
                    d.comp_content_size,
                    d.comp_base_size,
                    d.comp_image_size,
                    d.uncomp_content_size,
                    d.uncomp_base_size,
                    d.uncomp_image_size,
                )
                out.append(f"{thresh:<24}" + "".join(f"0x{c:<14x}" for c in cols))
        return out


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0.0%"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "1.000"


def _looks_like_bootstrap(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(EROFS_SUPER_OFFSET + 8)
        detect_version(head)
    except (OSError, FormatError):
        return False
    return True


def _bootstraps_in(directory: str) -> list[str]:
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise BuildError(f"blob directory {directory}: {exc.strerror}") from exc
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or not _looks_like_bootstrap(path):
            continue  # data blobs and other files
        out.append(path)
    return out


def stat_images(
    bootstrap: str | None,
    blob_dir: str | None,
    target: str | None,
    output_json: str | None = None,
) -> ImageStat:
    if bool(bootstrap) == bool(blob_dir):
        raise BuildError("give one of --bootstrap and --blob-dir")
    st = ImageStat()
    if blob_dir:
        paths = _bootstraps_in(blob_dir)
        if not paths:
            raise BuildError(f"no bootstrap found in {blob_dir}")
        st.dedup_enabled = True
    else:
        assert bootstrap is not None
        paths = [bootstrap]
    for p in paths:
        st.add(p, load_bootstrap(p), True)
    if target:
        st.target_enabled = True
        st.add(target, load_bootstrap(target, "target bootstrap"), False)
    st.finalize()
    if output_json:
        write_atomic(output_json, json.dumps(st.to_json(), indent=2).encode())
    return st
