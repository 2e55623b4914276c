"""Fixture trees: one with every entry type a builder must carry, and large ones for benchmarks.

Everything is deterministic (seeded random data, fixed mtimes), so two calls produce trees whose
snapshots compare equal (inode numbers aside).  Creating device nodes, chown to arbitrary ids,
``trusted.*`` and ``security.capability`` xattrs needs root.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FullTreeInfo",
    "capability_v2",
    "make_full_tree",
    "make_large_tree",
    "make_sparse_file",
]

SEED = 20240607

# A fixed base time (2021-01-01T00:00:00Z) so mtimes are reproducible.
BASE_TIME = 1_609_459_200


def capability_v2(permitted: int, inheritable: int = 0, effective: bool = True) -> bytes:
    """A ``struct vfs_cap_data`` revision 2 (20 bytes) as stored in ``security.capability``."""
    magic = 0x0200_0000 | (1 if effective else 0)
    return struct.pack(
        "<IIIII",
        magic,
        permitted & 0xFFFF_FFFF,
        inheritable & 0xFFFF_FFFF,
        permitted >> 32,
        inheritable >> 32,
    )


# CAP_NET_BIND_SERVICE (10) | CAP_NET_RAW (13)
CAPABILITY = capability_v2((1 << 10) | (1 << 13))


@dataclass
class FullTreeInfo:
    """Notable relative paths (bytes) in a tree made by :func:`make_full_tree`."""

    root: Path
    chunk_size: int
    regular: list[bytes] = field(default_factory=list)
    hardlinks: list[bytes] = field(default_factory=list)  # the three names of one regular file
    symlink_hardlinks: list[bytes] = field(default_factory=list)  # two names of one symlink
    sparse: bytes = b""
    sparse_size: int = 0
    bigdir: bytes = b""
    bigdir_entries: int = 0
    long_name: bytes = b""
    non_utf8: list[bytes] = field(default_factory=list)
    # paths whose xattrs are set, with the expected xattrs (name -> value); ACLs are not listed
    xattrs: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    acl_access: bytes = b""
    acl_default: bytes = b""
    devices: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)
    mtimes_ns: dict[bytes, int] = field(default_factory=dict)


class _Maker:
    def __init__(self, root: Path, rng: random.Random, info: FullTreeInfo) -> None:
        self.root = os.fsencode(root)
        self.rng = rng
        self.info = info
        # applied at the end, deepest paths first, so directory mtimes survive their children
        self.times: list[tuple[bytes, int]] = []

    def p(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel else self.root

    def mtime(self, rel: bytes, ns: int | None = None) -> None:
        if ns is None:
            ns = (BASE_TIME + self.rng.randrange(0, 3 * 365 * 86400)) * 10**9 + self.rng.randrange(
                1, 10**9
            )
        self.times.append((rel, ns))
        self.info.mtimes_ns[rel] = ns

    def dir(
        self, rel: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0, ns: int | None = None
    ) -> None:
        path = self.p(rel)
        os.mkdir(path)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.mtime(rel, ns)

    def file(
        self,
        rel: bytes,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        ns: int | None = None,
    ) -> None:
        path = self.p(rel)
        with open(path, "wb") as f:
            f.write(data)
        # chown clears setuid/setgid bits and security.capability: chown first, then chmod
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.info.regular.append(rel)
        self.mtime(rel, ns)

    def symlink(
        self, rel: bytes, target: bytes, uid: int = 0, gid: int = 0, ns: int | None = None
    ) -> None:
        path = self.p(rel)
        os.symlink(target, path)
        os.chown(path, uid, gid, follow_symlinks=False)
        self.mtime(rel, ns)

    def node(
        self, rel: bytes, kind: str, major: int = 0, minor: int = 0, mode: int = 0o644
    ) -> None:
        fmt = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}[kind]
        path = self.p(rel)
        os.mknod(path, fmt | mode, os.makedev(major, minor))
        os.chmod(path, mode)
        if kind != "fifo":
            self.info.devices[rel] = (kind, major, minor)
        self.mtime(rel)

    def xattr(self, rel: bytes, name: str, value: bytes) -> None:
        os.setxattr(self.p(rel), name, value, follow_symlinks=False)
        self.info.xattrs.setdefault(rel, {})[name] = value

    def random(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def finish(self) -> None:
        for rel, ns in sorted(self.times, key=lambda t: -t[0].count(b"/") - (1 if t[0] else 0)):
            os.utime(self.p(rel), ns=(ns, ns), follow_symlinks=False)


def make_sparse_file(
    path: str | os.PathLike[str] | bytes, size: int, pieces: dict[int, bytes]
) -> None:
    """Create a sparse file of apparent ``size`` bytes holding ``pieces`` (offset -> data)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in sorted(pieces.items()):
            f.seek(off)
            f.write(data)


def make_full_tree(
    path: str | os.PathLike[str], chunk_size: int = 0x10000, seed: int = SEED
) -> FullTreeInfo:
    """Create (under the existing or new directory ``path``) a tree with every entry type.

    ``chunk_size`` sizes the chunk-related files (one chunk, several chunks plus a short tail,
    repeated chunks); with the default 64 KiB the whole tree is about 5 MiB apparent size.
    Needs root (device nodes, chown, trusted./security. xattrs).
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ValueError(f"{root}: not empty")
    rng = random.Random(seed)
    info = FullTreeInfo(root=root, chunk_size=chunk_size)
    m = _Maker(root, rng, info)
    cs = chunk_size

    os.chown(root, 0, 0)
    os.chmod(root, 0o755)
    m.mtime(b"")

    # -- regular files -------------------------------------------------------------------------
    m.file(b"empty")
    m.file(b"small.txt", b"hello, nydus\n")
    m.file(b"one-chunk.bin", m.random(cs))
    m.file(b"multi-chunk.bin", m.random(3 * cs + 1234))
    m.file(b"zeros.bin", bytes(4 * cs))  # identical all-zero chunks: dedup within a file
    block = m.random(cs)
    m.file(b"repeat.bin", block * 3 + block[:100])  # identical non-zero chunks
    dup = m.random(cs + 777)
    m.file(b"dup-a.bin", dup)
    m.dir(b"dup")
    m.file(b"dup/dup-b.bin", dup)  # whole-file dedup
    # names that sort before "." and ".."
    m.file(b" sp", b"space\n")
    m.file(b"+plus", b"plus\n")
    m.file(b"-dash", b"dash\n")
    m.file(b"!bang", b"")
    # sparse file: a few MiB with holes at the start of chunks, in the middle and at the end
    sparse_size = 4 * 1024 * 1024 + 4096 + 17
    pieces = {
        0: m.random(5000),
        1024 * 1024 + 100: m.random(3 * 4096),
        3 * 1024 * 1024 - 7: b"across-a-MiB-boundary",
        sparse_size - 10: b"0123456789",
    }
    make_sparse_file(m.p(b"sparse.img"), sparse_size, pieces)
    os.chmod(m.p(b"sparse.img"), 0o640)
    info.regular.append(b"sparse.img")
    info.sparse, info.sparse_size = b"sparse.img", sparse_size
    m.mtime(b"sparse.img")

    # -- directories ---------------------------------------------------------------------------
    m.dir(b"nested")
    m.dir(b"nested/a")
    m.dir(b"nested/a/b")
    m.dir(b"nested/a/b/c")
    m.file(b"nested/a/b/c/deep.txt", b"deep\n")
    m.dir(b"nested/empty-dir")
    # 320 entries with 40-byte names: ~16 KiB of dirents, i.e. several 4 KiB dirent blocks
    m.dir(b"bigdir")
    n_big = 320
    for i in range(n_big):
        name = b"bigdir/entry-%04d-with-a-rather-long-name-xx" % i
        if i % 50 == 7:
            m.dir(name)
        elif i % 10 == 3:
            m.symlink(name, b"../small.txt")
        else:
            m.file(name, b"%d\n" % i if i % 2 else b"")
    m.file(b"bigdir/ sorts-first", b"x")
    m.file(b"bigdir/~sorts-last", b"y")
    info.bigdir, info.bigdir_entries = b"bigdir", n_big + 2

    # -- symlinks ------------------------------------------------------------------------------
    m.dir(b"links")
    m.symlink(b"links/short", b"../small.txt")
    long_target = (b"long-target/" * 30)[:299] + b"T"
    assert len(long_target) == 300
    m.symlink(b"links/long", long_target)
    m.symlink(b"links/dangling", b"does/not/exist")
    m.symlink(b"links/absolute", b"/etc/hostname")
    m.symlink(b"links/to-dir", b"../nested")
    # a hard link to a symlink (the builder may or may not share the inode; see snapshot)
    m.symlink(b"links/linked-symlink", b"small-target")
    os.link(m.p(b"links/linked-symlink"), m.p(b"links/linked-symlink-2"), follow_symlinks=False)
    info.symlink_hardlinks = [b"links/linked-symlink", b"links/linked-symlink-2"]

    # -- hard links: one regular file with three names in different directories -------------
    m.dir(b"hard")
    m.dir(b"hard/other")
    m.file(b"hard/orig.txt", m.random(cs + 5), mode=0o640, uid=1001, gid=1002)
    os.link(m.p(b"hard/orig.txt"), m.p(b"hard/other/link2.txt"))
    os.link(m.p(b"hard/orig.txt"), m.p(b"hardlink3.txt"))
    info.hardlinks = [b"hard/orig.txt", b"hard/other/link2.txt", b"hardlink3.txt"]
    # an empty file with two names
    m.file(b"hard/empty-1")
    os.link(m.p(b"hard/empty-1"), m.p(b"hard/other/empty-2"))

    # -- special files -------------------------------------------------------------------------
    m.dir(b"dev")
    m.node(b"dev/null", "chr", 1, 3, 0o666)
    m.node(b"dev/loop0", "blk", 7, 0, 0o660)
    m.node(b"dev/big-minor", "chr", 259, 70000 & 0xFFFFF, 0o600)  # minor > 255: new encoding
    m.node(b"dev/fifo", "fifo", mode=0o644)

    # -- ownership and modes -------------------------------------------------------------------
    m.dir(b"owners", uid=1000, gid=1000)
    m.file(b"owners/user", b"u\n", uid=1000, gid=100)
    m.file(b"owners/big-ids", b"b\n", uid=70000, gid=80000)
    m.file(b"owners/huge-ids", b"h\n", uid=3_000_000_000, gid=2_500_000)
    m.dir(b"owners/big-dir", uid=100_000, gid=100_001)
    m.symlink(b"owners/link", b"user", uid=1234, gid=5678)
    m.dir(b"modes")
    m.file(b"modes/setuid", b"#!/bin/sh\n", mode=0o4755)
    m.file(b"modes/setgid", b"#!/bin/sh\n", mode=0o2755)
    m.file(b"modes/all-bits", b"", mode=0o7777)
    m.file(b"modes/none", b"", mode=0o000)
    m.file(b"modes/exec", b"#!/bin/sh\n", mode=0o700)
    m.dir(b"modes/sticky", mode=0o1777)
    m.dir(b"modes/setgid-dir", mode=0o2775)
    m.dir(b"modes/closed-dir", mode=0o700)
    m.file(b"modes/closed-dir/inside", b"i\n")

    # -- mtimes --------------------------------------------------------------------------------
    m.dir(b"times")
    m.file(b"times/epoch", b"", ns=0)
    m.file(b"times/one-ns", b"", ns=1)
    m.file(b"times/max-ns", b"", ns=1_500_000_000 * 10**9 + 999_999_999)
    m.file(b"times/after-2038", b"", ns=4_000_000_000 * 10**9 + 123_456_789)
    m.file(b"times/whole-second", b"", ns=1_700_000_000 * 10**9)

    # -- xattrs --------------------------------------------------------------------------------
    m.dir(b"xattrs")
    m.file(b"xattrs/user", b"x\n")
    m.xattr(b"xattrs/user", "user.comment", b"a comment")
    m.xattr(b"xattrs/user", "user.empty", b"")
    m.xattr(b"xattrs/user", "user.binary", bytes(range(256)))
    m.file(b"xattrs/trusted", b"t\n")
    m.xattr(b"xattrs/trusted", "trusted.md5sum", b"\x00\x01\x02")
    m.xattr(b"xattrs/trusted", "trusted.foo", b"bar")
    m.file(b"xattrs/cap", b"\x7fELF-not-really\n", mode=0o755)
    m.xattr(b"xattrs/cap", "security.capability", CAPABILITY)
    m.file(b"xattrs/many", b"")
    for i in range(20):
        m.xattr(b"xattrs/many", "user.k%02d" % i, b"v" * (i * 7))
    m.dir(b"xattrs/dir")
    m.xattr(b"xattrs/dir", "user.dir-attr", b"on a directory")
    m.symlink(b"xattrs/symlink", b"user")
    m.xattr(b"xattrs/symlink", "trusted.on-symlink", b"sym")
    # POSIX ACLs via setfacl (system.posix_acl_access / system.posix_acl_default)
    m.file(b"xattrs/acl", b"acl\n", mode=0o640)
    subprocess.run(["setfacl", "-m", "u:1234:r", m.p(b"xattrs/acl")], check=True)
    info.acl_access = os.getxattr(m.p(b"xattrs/acl"), "system.posix_acl_access")
    m.dir(b"xattrs/acl-dir")
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rx", m.p(b"xattrs/acl-dir")], check=True)
    info.acl_default = os.getxattr(m.p(b"xattrs/acl-dir"), "system.posix_acl_default")

    # -- names ---------------------------------------------------------------------------------
    m.dir(b"names")
    long_name = b"L" * 250 + b".long"
    assert len(long_name) == 255
    m.file(b"names/" + long_name, b"long name\n")
    info.long_name = b"names/" + long_name
    m.file(b"names/caf\xe9", b"latin-1 name\n")
    m.file(b"names/\xff\xfe-invalid", b"")
    m.dir(b"names/dir-\xc3\x28")  # invalid UTF-8 sequence as a directory name
    m.file(b"names/dir-\xc3\x28/inside", b"")
    m.file("names/unicode-\u00e9\u4e2d".encode(), b"utf-8 name\n")
    m.file(b"names/with space and\ttab", b"")
    m.file(b"names/new\nline", b"")
    info.non_utf8 = [b"names/caf\xe9", b"names/\xff\xfe-invalid", b"names/dir-\xc3\x28"]

    m.finish()
    return info


def make_large_tree(
    path: str | os.PathLike[str], total_bytes: int, nfiles: int, seed: int = SEED
) -> dict[str, int]:
    """Create a benchmark tree of about ``total_bytes`` bytes in ``nfiles`` regular files.

    Shape: ~100 files per directory two levels deep; 0.5 % of the files are large and hold 70 %
    of the bytes, the rest are small (exponential sizes).  Content is 40 % incompressible random
    bytes and 60 % text-like bytes (slices of a pool of words), so compressors have work to do.
    Returns ``{"files": n, "dirs": n, "bytes": n}``.
    """
    root = Path(path)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = random.Random(seed)
    # text-like data: an ~8 MB pool of words from a 2,000-word vocabulary (bigger than the window
    # of zstd -3, so tar|zstd gets no unrealistic cross-file matches); compressible files are
    # random 4 KiB slices of it (LZ matches for lz4 and zstd, but no accidental chunk dedup)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(2000)]
    pool = " ".join(rng.choices(vocab, k=1_200_000)).encode()
    slice_len = 4096

    def content(n: int) -> bytes:
        if n == 0:
            return b""
        if rng.random() < 0.4:
            return rng.randbytes(n)
        parts = []
        got = 0
        while got < n:
            off = rng.randrange(len(pool) - slice_len)
            parts.append(pool[off : off + slice_len])
            got += slice_len
        return b"".join(parts)[:n]

    n_large = max(1, nfiles // 200)
    n_small = max(0, nfiles - n_large)
    large_mean = 0.7 * total_bytes / n_large
    small_mean = 0.3 * total_bytes / max(1, n_small)
    sizes = [int(rng.expovariate(1 / small_mean)) for _ in range(n_small)]
    sizes += [max(1, int(large_mean * rng.uniform(0.5, 1.5))) for _ in range(n_large)]
    rng.shuffle(sizes)
    # scale to the exact total
    scale = total_bytes / max(1, sum(sizes))
    sizes = [int(s * scale) for s in sizes]
    sizes[-1] += total_bytes - sum(sizes)

    per_dir = 100
    dirs = 0
    written = 0
    for i, size in enumerate(sizes):
        d = root / f"d{i // (per_dir * per_dir):03d}" / f"s{(i // per_dir) % per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
            dirs += 1
        with open(d / f"f{i:06d}.dat", "wb") as f:
            remaining = size
            while remaining:
                n = min(remaining, 4 << 20)
                f.write(content(n))
                remaining -= n
        written += size
    return {"files": len(sizes), "dirs": dirs, "bytes": written}
