"""Small RAFS v6 images of our own, built in-process for unit tests: no root, no subprocess, no
mount.

:func:`build_image` writes a layer tar (``tests.helpers.layers``) and calls the builder library
(``nydus.builder.build.create``) on it, so every entry type (device nodes, owners, ``trusted.*``
xattrs, hard links) is in the image without root.  The result knows its source, so a test can
compare what a reader returns with what went in.

These images are the oracle of format/, fs/ and storage/ unit tests on a machine without the
upstream golden vectors (``tests/golden.py``); the golden-based tests stay, being upstream's
output and so the stronger oracle for byte-level interop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from nydus.builder.build import CreateOptions, create
from nydus.format.rafs import RafsSuper, open_bootstrap, walk
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester
from tests.helpers.layers import BLK, CHR, FIFO, D, F, H, L, Member, layer_bytes

__all__ = ["OwnImage", "build_image", "sample_members"]

CHUNK = 0x1000  # the smallest chunk size: multi-chunk files stay a few KiB


def sample_members(chunk_size: int = CHUNK, seed: int = 8) -> list[Member]:
    """A small tree with every entry type and the chunk shapes the readers care about.

    * ``/text.txt``: 3.5 chunks of compressible text; ``/random.bin``: 2 incompressible chunks
    * ``/repeat.bin``: chunk X, X again, then Y (one chunk used twice within a file)
    * ``/dup/a`` and ``/dup/b``: the same content (deduplicated across files)
    * ``/dir``: 10 small files (readdir offsets); ``/hard``: a hard link to ``/small``
    * a symlink, char and block devices, a FIFO, an empty file, owners, xattrs
    """
    rng = random.Random(seed)
    line = b"the quick brown fox jumps over the lazy dog %05d\n"
    text = b"".join(line % i for i in range(chunk_size * 7 // 2 // len(line % 0) + 1))
    text = text[: chunk_size * 7 // 2]
    x, y = rng.randbytes(chunk_size), rng.randbytes(chunk_size // 2)
    shared = rng.randbytes(chunk_size + 123)
    return [
        D("dir", mode=0o755),
        *(F(f"dir/f{i:02d}", b"entry %d\n" % i) for i in range(10)),
        D("dup", mode=0o750, xattrs={"trusted.t": b"opaque-ish"}),
        F("dup/a", shared),
        F("dup/b", shared),
        F("empty"),
        F("random.bin", rng.randbytes(2 * chunk_size)),
        F("repeat.bin", x + x + y),
        F("small", b"hello\n", mode=0o640, uid=1000, gid=1001, xattrs={"user.k": b"v"}),
        H("hard", "small"),
        F("text.txt", text),
        L("link", "/target/of/link"),
        D("dev"),
        CHR("dev/null", 1, 3, mode=0o666),
        BLK("dev/loop9", 7, 9, mode=0o660),
        FIFO("dev/fifo", mode=0o600),
    ]


@dataclass
class OwnImage:
    """A bootstrap and its blob in ``blob_dir`` (file named by the blob id), and their source."""

    bootstrap: Path
    blob_dir: Path
    blob_id: str
    members: list[Member]
    chunk_size: int
    compressor: Compressor
    digester: Digester

    @property
    def blob_path(self) -> Path:
        return self.blob_dir / self.blob_id

    def open(self) -> RafsSuper:
        """A fresh reader over the bootstrap."""
        return open_bootstrap(self.bootstrap.read_bytes())

    @cached_property
    def files(self) -> dict[bytes, bytes]:
        """Contents of the regular files (hard links included), by absolute path."""
        out: dict[bytes, bytes] = {}
        for m in self.members:
            if m.kind == "file":
                out[_abs(m.name)] = m.data
        for m in self.members:
            if m.kind == "hardlink":
                out[_abs(m.name)] = out[_abs(m.linkname)]
        return out

    def member(self, path: bytes) -> Member:
        """The source member at ``path`` (the link target's member for a hard link)."""
        by_path = {_abs(m.name): m for m in self.members}
        m = by_path[path]
        return by_path[_abs(m.linkname)] if m.kind == "hardlink" else m

    def paths(self) -> list[bytes]:
        """Every path of the source, with the root, sorted."""
        return sorted({b"/", *(_abs(m.name) for m in self.members)})

    def ino(self, sb: RafsSuper, path: bytes) -> int:
        return dict(walk(sb))[path]


def _abs(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return b"/" + raw.strip(b"/")


def build_image(
    dest: Path,
    members: list[Member] | None = None,
    *,
    compressor: str = "zstd",
    digester: str = "blake3",
    chunk_size: int = CHUNK,
    blob_toc: bool = True,
    repeatable: bool = False,
) -> OwnImage:
    """Build ``members`` (default :func:`sample_members`) into ``dest`` with the builder
    library: ``dest/layer.tar`` -> ``dest/bootstrap`` and ``dest/blobs/<blob id>``."""
    members = sample_members(chunk_size) if members is None else members
    dest.mkdir(parents=True, exist_ok=True)
    tar = dest / "layer.tar"
    tar.write_bytes(layer_bytes(members))
    blobs = dest / "blobs"
    blobs.mkdir(exist_ok=True)
    res = create(
        CreateOptions(
            source=str(tar),
            source_type="tar-rafs",
            bootstrap=str(dest / "bootstrap"),
            blob_dir=str(blobs),
            compressor=Compressor.from_name(compressor),
            digester=Digester.from_name(digester),
            chunk_size=chunk_size,
            blob_toc=blob_toc,
            repeatable=repeatable,
        )
    )
    assert res.blob_id is not None, "the image has no data blob"
    return OwnImage(
        dest / "bootstrap",
        blobs,
        res.blob_id,
        members,
        chunk_size,
        Compressor.from_name(compressor),
        Digester.from_name(digester),
    )
