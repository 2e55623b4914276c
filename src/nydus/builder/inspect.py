"""`nydus-image inspect`: query a bootstrap (`-R` one request as JSON, or a prompt)."""

from __future__ import annotations

import json
import posixpath
import stat
from collections.abc import Callable
from typing import TextIO

from nydus.errors import NydusError
from nydus.format.rafs import ChunkRef, RafsSuper, walk


class Inspector:
    def __init__(self, sb: RafsSuper) -> None:
        self.sb = sb
        self.cwd = "/"

    def _resolve(self, path: str) -> int:
        full = posixpath.normpath(posixpath.join(self.cwd, path))
        ino = self.sb.root_ino
        for part in full.split("/"):
            if not part:
                continue
            nxt = self.sb.lookup(ino, part.encode("utf-8", "surrogateescape"))
            if nxt is None:
                raise NydusError(f"{full}: no such file or directory")
            ino = nxt
        return ino

    def request(self, line: str) -> object:
        """Answer one request as a JSON-able value (the `-R` form)."""
        words = line.split()
        if not words:
            return None
        cmd, args = words[0], words[1:]
        sb = self.sb
        if cmd == "stats":
            return {
                "inodes_count": sum(1 for _ in walk(sb)),
                "version": sb.version,
                "flags": sb.flags,
                "chunk_size": sb.chunk_size,
                "blobs_count": len(sb.blobs),
            }
        if cmd == "blobs":
            return [
                {
                    "blob_id": b.blob_id,
                    "readahead_offset": 0,
                    "readahead_size": 0,
                    "decompressed_size": b.uncompressed_size,
                    "compressed_size": b.compressed_size,
                    "chunk_count": b.chunk_count,
                    "features": b.features,
                }
                for b in sb.blobs
            ]
        if cmd == "prefetch":
            paths = {ino: p for p, ino in walk(sb)}
            return [
                {"inode": ino, "path": paths.get(ino, b"?").decode(errors="replace")}
                for ino in sb.prefetch_inos()
            ]
        if cmd == "ls":
            ino = self._resolve(args[0] if args else ".")
            return [
                {
                    "name": e.name.decode(errors="replace"),
                    "inode": e.ino,
                    "mode": oct(sb.attr(e.ino).mode),
                }
                for e in sb.readdir(ino)
            ]
        if cmd == "stat":
            ino = self._resolve(args[0] if args else ".")
            a = sb.attr(ino)
            out: dict[str, object] = {
                "inode": ino,
                "mode": oct(a.mode),
                "size": a.size,
                "uid": a.uid,
                "gid": a.gid,
                "nlink": a.nlink,
                "mtime": a.mtime,
                "mtime_nsec": a.mtime_nsec,
                "rdev": a.rdev,
            }
            if stat.S_ISLNK(a.mode):
                out["target"] = sb.readlink(ino).decode(errors="replace")
            xattrs = sb.xattrs(ino)
            if xattrs:
                out["xattrs"] = {k.decode(errors="replace"): v.hex() for k, v in xattrs.items()}
            if a.is_reg:
                out["chunks"] = [_chunk_json(c) for c in sb.chunks(ino)]
            return out
        if cmd == "chunk":
            ino = self._resolve(args[0])
            return [_chunk_json(c) for c in sb.chunks(ino)]
        if cmd == "cd":
            target = posixpath.normpath(posixpath.join(self.cwd, args[0] if args else "/"))
            if not sb.attr(self._resolve(target)).is_dir:
                raise NydusError(f"{target}: not a directory")
            self.cwd = target
            return None
        raise NydusError(f"unknown request {cmd!r} (stats, blobs, prefetch, ls, cd, stat, chunk)")

    def prompt(self, inp: TextIO, out: Callable[[str], None]) -> None:
        while True:
            out("Inspecting RAFS :> ")
            line = inp.readline()
            if not line or line.strip() in ("exit", "q"):
                return
            if line.strip() == "help":
                out(
                    "commands: stats, blobs, prefetch, ls [DIR], cd DIR, stat FILE, "
                    "chunk FILE, exit\n"
                )
                continue
            try:
                value = self.request(line)
            except NydusError as exc:
                out(f"error: {exc}\n")
                continue
            if value is not None:
                out(json.dumps(value, indent=2) + "\n")


def _chunk_json(c: ChunkRef) -> dict[str, object]:
    return {
        "blob_index": c.blob_index,
        "index": c.ci_index,
        "file_offset": c.file_offset,
        "uncompressed_offset": c.uncompressed_offset,
        "uncompressed_size": c.uncompressed_size,
        "compressed_offset": c.compressed_offset,
        "compressed_size": c.compressed_size,
        "digest": c.digest.hex() if c.digest else None,
    }
