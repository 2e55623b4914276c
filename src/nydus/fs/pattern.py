"""The access pattern (`access_pattern`): the first read of each file and of each chunk, in
order, for `GET /api/v1/metrics/pattern` and for writing a prefetch list.

Reads arrive by file (FUSE: inode, offset, size) or by blob (the erofs driver, where the
kernel serves the metadata and the daemon sees only reads of a blob's uncompressed view):
`record_blob_read` maps the blob range to its chunks and, through a reverse index built
from the bootstrap on first use, to the file that holds each chunk (a chunk several files
share counts for the first of them in bootstrap order).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nydus.format.rafs import ChunkRef, RafsSuper, walk

__all__ = ["AccessPattern"]


@dataclass(slots=True)
class _File:
    ino: int
    first_ns: int
    nr_read: int = 0
    positions: set[int] = field(default_factory=set)  # chunk positions in the file read


class AccessPattern:
    """First-access order of files and chunks of one mounted filesystem."""

    def __init__(self, sb: RafsSuper) -> None:
        self.sb = sb
        self._lock = threading.Lock()
        self._files: dict[int, _File] = {}  # insertion order = first access
        self._chunks: dict[tuple[int, int], None] = {}  # (blob index, chunk index), ordered
        self._owners: dict[int, tuple[list[int], list[tuple[int, int, int, int]]]] | None = None
        self._ci: dict[tuple[int, int], int] = {}  # (blob index, offset) -> chunk index
        self._paths: dict[int, str] | None = None

    # ---- recording ------------------------------------------------------------------
    def record_read(self, ino: int, chunks: Sequence[ChunkRef], offset: int, size: int) -> None:
        """A file read of `size` bytes at `offset` (after the data was served)."""
        if size <= 0:
            return
        cs = self.sb.chunk_size
        first, last = offset // cs, (offset + size - 1) // cs
        last = min(last, len(chunks) - 1)
        with self._lock:
            f = self._file(ino)
            f.nr_read += 1
            for pos in range(first, last + 1):
                f.positions.add(pos)
                ref = chunks[pos]
                self._chunks.setdefault((ref.blob_index, ref.ci_index), None)

    def record_blob_read(self, blob_index: int, offset: int, size: int) -> None:
        """A read of `size` bytes at `offset` of blob `blob_index`'s uncompressed view."""
        if size <= 0:
            return
        starts, entries = self._owner_index().get(blob_index, ([], []))
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        hits = []
        while i < len(entries):
            start, end, ino, pos = entries[i]
            if start >= offset + size:
                break
            if end > offset:
                hits.append((start, ino, pos))
            i += 1
        if not hits:
            return
        with self._lock:
            counted: set[int] = set()
            for start, ino, pos in hits:
                f = self._file(ino)
                if ino not in counted:
                    f.nr_read += 1
                    counted.add(ino)
                f.positions.add(pos)
                self._chunks.setdefault((blob_index, self._ci_of(blob_index, start)), None)

    def _file(self, ino: int) -> _File:
        f = self._files.get(ino)
        if f is None:
            f = self._files[ino] = _File(ino, time.time_ns())
        return f

    def _ci_of(self, blob_index: int, start: int) -> int:
        return self._ci.get((blob_index, start), -1)

    def _owner_index(self) -> dict[int, tuple[list[int], list[tuple[int, int, int, int]]]]:
        """Per blob: chunk start offsets (sorted) and (start, end, ino, position) entries."""
        if self._owners is not None:
            return self._owners
        per_blob: dict[int, dict[int, tuple[int, int, int, int]]] = {}
        ci: dict[tuple[int, int], int] = {}
        seen: set[int] = set()
        for _path, ino in walk(self.sb):
            if ino in seen:
                continue
            seen.add(ino)
            a = self.sb.attr(ino)
            if not a.is_reg or not a.size:
                continue
            for pos, ref in enumerate(self.sb.chunks(ino)):
                size = ref.uncompressed_size or min(
                    self.sb.chunk_size, a.size - pos * self.sb.chunk_size
                )
                d = per_blob.setdefault(ref.blob_index, {})
                if ref.uncompressed_offset not in d:
                    d[ref.uncompressed_offset] = (
                        ref.uncompressed_offset,
                        ref.uncompressed_offset + size,
                        ino,
                        pos,
                    )
                    ci[(ref.blob_index, ref.uncompressed_offset)] = ref.ci_index
        owners = {}
        for bi, d in per_blob.items():
            entries = [d[k] for k in sorted(d)]
            owners[bi] = ([e[0] for e in entries], entries)
        self._ci = ci
        self._owners = owners
        return owners

    # ---- views ------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, int]]:
        """Upstream's `metrics/pattern` records, in first-access order."""
        with self._lock:
            files = list(self._files.values())
        return [
            {
                "ino": f.ino,
                "nr_read": f.nr_read,
                "first_access_time_secs": f.first_ns // 1_000_000_000,
                "first_access_time_nanos": f.first_ns % 1_000_000_000,
            }
            for f in files
        ]

    def chunks(self) -> list[tuple[int, int]]:
        """(blob index, chunk index) of every chunk read, in first-access order."""
        with self._lock:
            return list(self._chunks)

    def prefetch_files(self) -> dict[str, object]:
        """The files read, in first-access order, as upstream's prefetch-files JSON (v1)
        with the byte ranges of the chunks each file had read."""
        with self._lock:
            files = [(f.ino, sorted(f.positions)) for f in self._files.values()]
        paths = self._path_map()
        cs = self.sb.chunk_size
        out: list[dict[str, object]] = []
        for ino, positions in files:
            path = paths.get(ino)
            if path is None:
                continue
            size = self.sb.attr(ino).size
            ranges: list[list[int]] = []
            for pos in positions:
                lo = pos * cs
                hi = min(size, lo + cs)
                if ranges and ranges[-1][0] + ranges[-1][1] == lo:
                    ranges[-1][1] += hi - lo
                else:
                    ranges.append([lo, hi - lo])
            out.append({"path": path, "ranges": ranges})
        return {"version": "v1", "files": out}

    def _path_map(self) -> dict[int, str]:
        if self._paths is None:
            paths: dict[int, str] = {}
            for path, ino in walk(self.sb):
                paths.setdefault(ino, path.decode("utf-8", "surrogateescape"))
            self._paths = paths
        return self._paths


def format_prefetch_list(doc: dict[str, object], fmt: str = "list") -> str:
    """A prefetch-files document as written to a file: "list" is one absolute path per line
    (first-access order), "json" upstream's JSON with ranges."""
    if fmt == "json":
        import json

        return json.dumps(doc, indent=2) + "\n"
    if fmt != "list":
        raise ValueError(f"unknown prefetch list format {fmt!r} (list, json)")
    files = doc.get("files")
    paths = [f["path"] for f in files if isinstance(f, dict)] if isinstance(files, list) else []
    return "".join(f"{p}\n" for p in paths)
