"""OCI image layer tars, and the overlayfs reference view of a stack of them.

Layers are written with Python's :mod:`tarfile` (PAX by default; GNU and ustar on request):
long names, big uids/gids, ``SCHILY.xattr.*`` records with raw binary values (written like Go's
``archive/tar`` and GNU tar do, without ``hdrcharset``), hard links, symlinks, device nodes and
OCI whiteouts (``.wh.NAME``, ``.wh..wh..opq``).

:func:`unpack_layer` extracts a layer into a directory converting OCI whiteouts into overlayfs
ones (character device 0:0, ``trusted.overlay.opaque=y``); :func:`overlay_view` unpacks a list
of layers and mounts a read-only overlayfs over them: the tree a layered build must equal.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import random
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from .erofs import mount_overlay

__all__ = [
    "BLK",
    "CHR",
    "FIFO",
    "OPAQUE_XATTR",
    "D",
    "F",
    "H",
    "L",
    "Member",
    "opaque",
    "overlay_view",
    "unpack_layer",
    "whiteout",
    "write_layer",
]

OPAQUE_XATTR = "trusted.overlay.opaque"
DEFAULT_MTIME = 1_650_000_000
_ENC = "utf-8"


def _s(name: str | bytes) -> str:
    return name.decode(_ENC, "surrogateescape") if isinstance(name, bytes) else name


@dataclass
class Member:
    """One tar member to write.  ``name``/``linkname`` may be bytes (any byte sequence)."""

    name: str | bytes
    kind: str  # file, dir, symlink, hardlink, chr, blk, fifo
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    linkname: str | bytes = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""
    pax: dict[str, str | bytes] = field(default_factory=dict)  # extra raw PAX records


def F(name: str | bytes, data: bytes = b"", **kw) -> Member:
    return Member(name, "file", data=data, **kw)


def D(name: str | bytes, **kw) -> Member:
    return Member(name, "dir", **kw)


def L(name: str | bytes, target: str | bytes, **kw) -> Member:
    """Symbolic link ``name`` -> ``target``."""
    return Member(name, "symlink", linkname=target, **kw)


def H(name: str | bytes, target: str | bytes, **kw) -> Member:
    """Hard link ``name`` to the earlier member ``target`` (a path inside the layer)."""
    return Member(name, "hardlink", linkname=target, **kw)


def CHR(name: str | bytes, major: int, minor: int, **kw) -> Member:
    return Member(name, "chr", devmajor=major, devminor=minor, **kw)


def BLK(name: str | bytes, major: int, minor: int, **kw) -> Member:
    return Member(name, "blk", devmajor=major, devminor=minor, **kw)


def FIFO(name: str | bytes, **kw) -> Member:
    return Member(name, "fifo", **kw)


def whiteout(path: str, **kw) -> Member:
    """OCI whiteout removing ``path`` of the lower layers: ``dir/.wh.name``."""
    parent, _, base = path.rstrip("/").rpartition("/")
    return F(f"{parent}/.wh.{base}" if parent else f".wh.{base}", **kw)


def opaque(directory: str, **kw) -> Member:
    """OCI opaque marker for ``directory``: ``directory/.wh..wh..opq``."""
    return F(f"{directory.rstrip('/')}/.wh..wh..opq", **kw)


class _RawPaxTarInfo(tarfile.TarInfo):
    """TarInfo whose PAX records carry raw bytes (like Go's archive/tar), never hdrcharset."""

    @classmethod
    def _create_pax_generic_header(cls, pax_headers, type, encoding):
        records = b""
        for keyword, value in pax_headers.items():
            kw = keyword.encode("utf-8", "surrogateescape")
            val = (
                value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
            )
            n = len(kw) + len(val) + 3
            p = 0
            while True:
                total = n + len(str(p))
                if total == p:
                    break
                p = total
            records += str(p).encode() + b" " + kw + b"=" + val + b"\n"
        info = {
            "name": "././@PaxHeader",
            "type": type,
            "size": len(records),
            "magic": tarfile.POSIX_MAGIC,
        }
        return cls._create_header(
            info, tarfile.USTAR_FORMAT, "ascii", "replace"
        ) + cls._create_payload(records)


_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
_KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_DEFAULT_MODES = {"file": 0o644, "dir": 0o755, "symlink": 0o777, "hardlink": 0o644}


def layer_bytes(members: Sequence[Member], fmt: str = "pax") -> bytes:
    """The uncompressed tar stream for ``members``."""
    buf = io.BytesIO()
    tformat = _FORMATS[fmt]
    with tarfile.open(
        fileobj=buf, mode="w", format=tformat, encoding=_ENC, errors="surrogateescape"
    ) as tf:
        for m in members:
            ti = _RawPaxTarInfo(
                _s(m.name) + ("/" if m.kind == "dir" and not _s(m.name).endswith("/") else "")
            )
            ti.type = _KINDS[m.kind]
            ti.mode = m.mode if m.mode is not None else _DEFAULT_MODES.get(m.kind, 0o644)
            ti.uid, ti.gid = m.uid, m.gid
            ti.uname, ti.gname = m.uname, m.gname
            ti.mtime = m.mtime
            ti.linkname = _s(m.linkname)
            ti.devmajor, ti.devminor = m.devmajor, m.devminor
            pax: dict[str, str | bytes] = {}
            if m.xattrs:
                if tformat != tarfile.PAX_FORMAT:
                    raise ValueError(f"{m.name!r}: xattrs need the pax format")
                for k, v in m.xattrs.items():
                    pax["SCHILY.xattr." + k] = v
            pax.update(m.pax)
            ti.pax_headers = pax  # type: ignore[assignment]
            if m.kind == "file":
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                ti.size = 0
                tf.addfile(ti)
    return buf.getvalue()


def write_layer(
    path: str | os.PathLike[str],
    members: Sequence[Member],
    fmt: str = "pax",
    compress: str | None = None,
) -> Path:
    """Write an OCI layer tar (``compress="gzip"``: a deterministic .tar.gz) and return its path."""
    data = layer_bytes(members, fmt)
    if compress == "gzip":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    elif compress is not None:
        raise ValueError(f"unknown compression {compress!r}")
    p = Path(path)
    p.write_bytes(data)
    return p


# -- unpacking -------------------------------------------------------------------------------


def _norm(name: str) -> bytes:
    raw = os.fsencode(name)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if any(p == b".." for p in parts):
        raise ValueError(f"tar member {name!r} escapes the layer root")
    return b"/".join(parts)


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    if raw is not None:
        return int(Decimal(raw) * 10**9)
    return int(ti.mtime) * 10**9


def _remove(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _apply_meta(path: bytes, ti: tarfile.TarInfo, is_link: bool) -> None:
    os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
    if not is_link:
        os.chmod(path, stat.S_IMODE(ti.mode))
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            os.setxattr(
                path,
                key[len("SCHILY.xattr.") :],
                value.encode(_ENC, "surrogateescape"),
                follow_symlinks=False,
            )


def unpack_layer(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract one layer into the new directory ``dest``, turning OCI whiteouts into overlayfs ones.

    Ownership, modes, mtimes (ns, from PAX ``mtime`` when present), device numbers, hard links and
    ``SCHILY.xattr.*`` are applied.  ``dest`` itself gets mode 0755, owner 0:0 unless the layer has
    a ``./`` entry.  Directories missing from the tar are created with mode 0755, owner 0:0.
    """
    root = os.fsencode(dest)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    os.mkdir(root)
    os.chown(root, 0, 0)
    os.chmod(root, 0o755)
    dirs: list[tuple[bytes, tarfile.TarInfo]] = []
    with tarfile.open(os.fspath(tar_path), "r:*", encoding=_ENC, errors="surrogateescape") as tf:
        for ti in tf:
            rel = _norm(ti.name)
            full = os.path.join(root, rel) if rel else root
            if not rel:
                if ti.isdir():
                    dirs.append((root, ti))
                continue
            parent, base = os.path.split(full)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if base == b".wh..wh..opq":
                os.setxattr(parent, OPAQUE_XATTR, b"y")
                continue
            if base.startswith(b".wh."):
                target = os.path.join(parent, base[4:])
                _remove(target)
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            if ti.isdir():
                if not os.path.isdir(full) or os.path.islink(full):
                    _remove(full)
                    os.mkdir(full)
                dirs.append((full, ti))
                continue
            _remove(full)
            if ti.isreg():
                src = tf.extractfile(ti)
                assert src is not None
                with open(full, "wb") as out:
                    shutil.copyfileobj(src, out)
            elif ti.issym():
                os.symlink(os.fsencode(ti.linkname), full)
            elif ti.islnk():
                os.link(os.path.join(root, _norm(ti.linkname)), full)
                continue  # a hard link shares the target's metadata
            elif ti.ischr() or ti.isblk():
                fmt = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
                os.mknod(full, fmt | 0o600, os.makedev(ti.devmajor, ti.devminor))
            elif ti.isfifo():
                os.mkfifo(full)
            else:
                raise ValueError(f"{ti.name!r}: unsupported tar member type {ti.type!r}")
            _apply_meta(full, ti, ti.issym())
            ns = _mtime_ns(ti)
            os.utime(full, ns=(ns, ns), follow_symlinks=False)
    # directories last, deepest first, so their mtimes are not disturbed by later children
    for full, ti in sorted(dirs, key=lambda d: -d[0].count(b"/")):
        _apply_meta(full, ti, False)
        ns = _mtime_ns(ti)
        os.utime(full, ns=(ns, ns))
    return Path(os.fsdecode(root))


@contextlib.contextmanager
def overlay_view(
    layers: Sequence[str | os.PathLike[str]],
    mountpoint: str | os.PathLike[str],
    workdir: str | os.PathLike[str] | None = None,
) -> Iterator[Path]:
    """Mount the reference view of the layer stack ``layers`` (tar paths, **bottom layer first**).

    Each tar is unpacked with :func:`unpack_layer` into ``workdir`` (default: a sibling directory
    of ``mountpoint``), then a read-only overlayfs ``lowerdir=top:...:bottom`` is mounted at
    ``mountpoint``.  Unmounted (and the unpacked layers removed) at exit.
    """
    mp = Path(mountpoint)
    wd = Path(workdir) if workdir is not None else mp.parent / (mp.name + ".layers")
    wd.mkdir(parents=True, exist_ok=True)
    dirs = []
    try:
        for i, tar in enumerate(layers):
            dirs.append(unpack_layer(tar, wd / f"layer{i}"))
        with mount_overlay(list(reversed(dirs)), mp) as view:
            yield view
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# -- the 3-layer reference stack ---------------------------------------------------------------


def three_layer_members(chunk_size: int = 0x10000, seed: int = 7) -> list[list[Member]]:
    """Members of a 3-layer image exercising OCI whiteouts (bottom layer first).

    layer 1: a base system (nested dirs, multi-chunk files, a hard link, symlinks, devices, a FIFO,
             a path > 100 bytes, xattrs incl. security.capability, uid/gid > 2097151);
    layer 2: deletes ``etc/hosts`` (``.wh.``), adds files, makes ``var/cache`` opaque
             (``.wh..wh..opq``), replaces ``etc/hostname`` (file) by a symlink, rewrites a
             lower file with content sharing its first chunk;
    layer 3: deletes the directory ``opt`` and the symlink ``usr/lib/libfoo.so``, replaces the
             file ``etc/passwd`` by a directory and the directory ``var/lib`` by a file, rewrites
             ``bin/sh`` (whose lower hard link ``bin/ls`` keeps the old content), whites out a
             name that never existed, adds a non-UTF-8 name.
    """
    import random

    from .trees import CAPABILITY

    rng = random.Random(seed)
    cs = chunk_size
    t1, t2, t3 = 1_600_000_000, 1_650_000_000, 1_700_000_000
    long_dir = "usr/share/" + "a-rather-long-directory-name-" * 2
    long_file = long_dir + "/" + "and-an-even-longer-file-name-" * 2 + ".txt"
    assert len(long_file) > 100
    sh_v1 = rng.randbytes(2 * cs + 100)
    libfoo = rng.randbytes(cs + 4000)
    layer1 = [
        D("etc", mtime=t1),
        F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mtime=t1 + 1),
        F("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o640, gid=42, mtime=t1 + 2),
        F("etc/hosts", b"127.0.0.1 localhost\n", mtime=t1 + 3),
        F("etc/hostname", b"base\n", mtime=t1 + 4),
        D("bin", mtime=t1),
        F("bin/sh", sh_v1, mode=0o755, mtime=t1 + 5),
        H("bin/ls", "bin/sh"),
        D("usr", mtime=t1),
        D("usr/lib", mtime=t1 + 6),
        F("usr/lib/libfoo.so.1", libfoo, mode=0o755, mtime=t1 + 7),
        L("usr/lib/libfoo.so", "libfoo.so.1", mtime=t1 + 8),
        D("usr/bin", mtime=t1),
        F(
            "usr/bin/ping",
            rng.randbytes(3000),
            mode=0o4755,
            xattrs={"security.capability": CAPABILITY, "user.note": b"hi \xff\x00 there"},
            mtime=t1 + 9,
        ),
        D("usr/share", mtime=t1),
        D(long_dir, mtime=t1 + 10),
        F(long_file, b"long path\n", mtime=t1 + 11),
        D("var", mtime=t1),
        D("var/cache", mtime=t1 + 12),
        F("var/cache/a", b"a\n", mtime=t1 + 13),
        F("var/cache/b", b"b\n", mtime=t1 + 14),
        D("var/cache/sub", mtime=t1 + 15),
        F("var/cache/sub/c", b"c\n", mtime=t1 + 16),
        D("var/lib", mtime=t1 + 17),
        F("var/lib/state", b"state\n", mtime=t1 + 18),
        D("opt", mtime=t1),
        D("opt/app", mtime=t1 + 19),
        F("opt/app/data", rng.randbytes(cs + 1), mtime=t1 + 20),
        D("opt/app/conf", mtime=t1 + 21),
        F("opt/app/conf/x", b"x=1\n", mtime=t1 + 22),
        D("tmp", mode=0o1777, mtime=t1),
        D("home", mtime=t1),
        D("home/user", mode=0o700, uid=1000, gid=1000, mtime=t1 + 23),
        F("home/user/.profile", b"export PS1='$ '\n", uid=1000, gid=1000, mtime=t1 + 24),
        F("home/bigid", b"big ids\n", uid=3_000_000, gid=4_000_000, mtime=t1 + 25),
        D("dev", mtime=t1),
        CHR("dev/null", 1, 3, mode=0o666, mtime=t1 + 26),
        BLK("dev/loop0", 7, 0, mode=0o660, gid=6, mtime=t1 + 27),
        FIFO("dev/initctl", mode=0o600, mtime=t1 + 28),
        F("empty", b"", mtime=t1 + 29),
    ]
    layer2 = [
        D("etc", mtime=t2),
        whiteout("etc/hosts"),
        F("etc/newfile", b"added in layer 2\n", mtime=t2 + 1),
        L("etc/hostname", "/proc/sys/kernel/hostname", mtime=t2 + 2),
        D("var", mtime=t2),
        D("var/cache", mode=0o750, mtime=t2 + 3),
        opaque("var/cache"),
        F("var/cache/new", b"fresh cache\n", mtime=t2 + 4),
        D("usr", mtime=t2),
        D("usr/lib", mtime=t2 + 5),
        F("usr/lib/libbar.so.2", rng.randbytes(3 * cs // 2), mtime=t2 + 6),
        # same first chunk as layer 1's libfoo.so.1, different tail: cross-layer dedup
        F("usr/lib/libfoo.so.1", libfoo[:cs] + b"patched tail\n", mode=0o755, mtime=t2 + 7),
        D("opt", mtime=t2),
        D("opt/app", mtime=t2 + 8),
        F("opt/app/added", b"added\n", mtime=t2 + 9),
        D("home", mtime=t2),
        D("home/user", mode=0o700, uid=1000, gid=1000, mtime=t2 + 10),
        F(
            "home/user/notes",
            b"notes\n",
            uid=1000,
            gid=1000,
            xattrs={"user.tag": b"layer2"},
            mtime=t2 + 11,
        ),
    ]
    layer3 = [
        whiteout("opt"),
        D("etc", mtime=t3),
        D("etc/passwd", mode=0o755, mtime=t3 + 1),
        F("etc/passwd/inside", b"a directory now\n", mtime=t3 + 2),
        D("var", mtime=t3),
        F("var/lib", b"a file now\n", mtime=t3 + 3),
        D("bin", mtime=t3),
        F("bin/sh", rng.randbytes(cs + 50), mode=0o755, mtime=t3 + 4),
        D("usr", mtime=t2),
        D("usr/lib", mtime=t3 + 5),
        whiteout("usr/lib/libfoo.so"),
        D("tmp", mode=0o1777, mtime=t3),
        whiteout("tmp/never-existed"),
        D("home", mtime=t3),
        F(b"home/caf\xe9", b"latin-1 name\n", mtime=t3 + 6),
    ]
    return [layer1, layer2, layer3]


def write_three_layers(
    directory: str | os.PathLike[str],
    chunk_size: int = 0x10000,
    fmt: str = "pax",
    compress: str | None = None,
) -> list[Path]:
    """Write the layers of :func:`three_layer_members` as ``layer{1,2,3}.tar[.gz]``; bottom first."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ext = ".tar.gz" if compress == "gzip" else ".tar"
    return [
        write_layer(d / f"layer{i}{ext}", members, fmt=fmt, compress=compress)
        for i, members in enumerate(three_layer_members(chunk_size), 1)
    ]


# -- broken gzip layers ------------------------------------------------------------------------

GZIP_FAULTS = ("crc-after-junk", "stored-flip", "trailing-garbage", "truncated-trailer")


def broken_gzip(tar: bytes, fault: str) -> bytes:
    """A gzip of `tar` that a careful reader must refuse:

    * ``crc-after-junk``: 2 MiB of random bytes after the tar's end blocks (tar readers stop
      before them), then a wrong CRC-32 -- caught only by reading the stream to its end;
    * ``stored-flip``: stored (level 0) deflate blocks, which have no check of their own,
      with one byte of file data flipped -- caught only by the CRC;
    * ``trailing-garbage``: bytes after the last member that are no gzip member;
    * ``truncated-trailer``: the 8-byte trailer cut to 4."""
    if fault == "crc-after-junk":
        out = bytearray(gzip.compress(tar + random.Random(7).randbytes(2 << 20), 6, mtime=0))
        out[-8] ^= 0x01
    elif fault == "stored-flip":
        out = bytearray(gzip.compress(tar, 0, mtime=0))
        out[len(out) // 2] ^= 0x20  # in the middle: file data for a tar of one big file
    elif fault == "trailing-garbage":
        out = bytearray(gzip.compress(tar, 6, mtime=0) + b"GARBAGE!")
    elif fault == "truncated-trailer":
        out = bytearray(gzip.compress(tar, 6, mtime=0)[:-4])
    else:
        raise ValueError(f"unknown gzip fault {fault!r}")
    return bytes(out)
