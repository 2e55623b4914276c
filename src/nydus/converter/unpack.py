"""Unpack the layers of an OCI image into one directory, applying OCI whiteouts.

This is the reference tree `nydusify check` compares a converted image with. Layers are
streamed (never seeked) through `tarfile`, bottom layer first:

* `.wh.NAME` removes `NAME` of the lower layers; `DIR/.wh..wh..opq` removes everything the
  lower layers put in `DIR` (entries of the same layer stay, wherever the marker or the
  whiteout stands in the tar);
* regular files, directories, symlinks, hard links (to any earlier path), FIFOs and device
  nodes are created with their owner, mode, mtime and `SCHILY.xattr.*` extended attributes;
  a device node that cannot be created (no CAP_MKNOD) is skipped and reported;
* an entry replaces a lower entry of another type; a directory over a directory merges, the
  upper one's owner, mode and xattrs winning; missing parents are created 0755 root:root;
* nothing is ever written through a symlink: a non-directory in the middle of a path is
  replaced by a directory, and `..` components are refused.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO

from nydus.builder.overlay import (
    OCI_OPAQUE,
    OCI_WHITEOUT_PREFIX,
    BadWhiteout,
    oci_whiteout_target,
)
from nydus.errors import NydusError
from nydus.utils.inflate import GzipError, gunzip_pieces

__all__ = ["IterReader", "UnpackError", "UnpackStats", "Unpacker", "open_layer_stream"]

log = logging.getLogger("nydus.converter")

_ENC = "utf-8"
_XATTR_PREFIX = "SCHILY.xattr."
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


class UnpackError(NydusError):
    pass


@dataclass
class UnpackStats:
    layers: int = 0
    entries: int = 0  # tar members applied (whiteouts included)
    whiteouts: int = 0
    skipped_devices: list[str] = field(default_factory=list)  # paths, "/"-rooted


class IterReader:
    """A read-only binary file over an iterator of byte pieces (a streamed blob)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(pieces)
        self._buf = b""
        self._pos = 0  # bytes of _buf already read (no copy of the rest per read)
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) - self._pos < n):
            try:
                piece = next(self._it)
            except StopIteration:
                self._eof = True
                break
            self._buf = self._buf[self._pos :] + piece
            self._pos = 0
        end = len(self._buf) if n < 0 else self._pos + n
        out = self._buf[self._pos : end]
        self._pos = min(end, len(self._buf))
        return out

    def drain(self) -> None:
        """Consume the rest (so that the producer's end-of-stream checks run)."""
        self._buf, self._pos = b"", 0
        for _ in self._it:
            pass
        self._eof = True

    def close(self) -> None:
        pass


class _Peek:
    """A stream with its first bytes already read (to sniff the compression)."""

    def __init__(self, head: bytes, rest: IO[bytes] | IterReader) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head, b""
                return out + self._rest.read()
            out, self._head = self._head[:n], self._head[n:]
            if len(out) < n:
                out += self._rest.read(n - len(out))
            return out
        return self._rest.read(n)


def open_layer_stream(raw: IO[bytes] | IterReader) -> IO[bytes] | _Peek | IterReader:
    """Uncompressed tar bytes of a layer stream: gzip (trailer checked: `utils.inflate`) and
    zstd are decompressed here, xz/bzip2 are left to `tarfile`'s `r|*`."""
    head = raw.read(4)
    stream = _Peek(head, raw)
    if head == _ZSTD_MAGIC:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(stream)  # type: ignore[arg-type]
    if head[:2] == _GZIP_MAGIC:
        return IterReader(gunzip_pieces(iter(lambda: stream.read(1 << 20), b"")))
    return stream


def _norm(name: str, what: str) -> bytes:
    raw = name.encode(_ENC, "surrogateescape")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise UnpackError(f"{what}: tar entry {name!r} escapes the root with '..'")
    return b"/".join(parts)


def _show(rel: bytes) -> str:
    return "/" + rel.decode(_ENC, "backslashreplace")


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    if raw:
        try:
            return int(Decimal(raw) * 10**9)
        except InvalidOperation:
            pass
    return int(ti.mtime) * 10**9


def _xattrs(ti: tarfile.TarInfo) -> dict[bytes, bytes]:
    return {
        k[len(_XATTR_PREFIX) :].encode(_ENC, "surrogateescape"): v.encode(_ENC, "surrogateescape")
        for k, v in ti.pax_headers.items()
        if k.startswith(_XATTR_PREFIX)
    }


@dataclass
class _DirMeta:
    mode: int
    mtime_ns: int


class Unpacker:
    """Apply layers one after another to `root` (created if missing); call `finish()` last."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        self.stats = UnpackStats()
        self._dirs: dict[bytes, _DirMeta] = {}
        self._layer: set[bytes] = set()  # paths the current layer created or entered

    def _full(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel else self.root

    # -- layers --------------------------------------------------------------------------

    def apply_layer(self, stream: IO[bytes] | _Peek | IterReader, what: str) -> None:
        """Apply one uncompressed-or-gzip tar stream (see `open_layer_stream`)."""
        self._layer = set()
        self.stats.layers += 1
        try:
            tf = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115 - closed below
                fileobj=stream, mode="r|*", encoding=_ENC, errors="surrogateescape"
            )
        except (tarfile.TarError, OSError, EOFError, GzipError) as exc:
            raise UnpackError(f"{what}: not a readable tar archive: {exc}") from exc
        try:
            for ti in tf:
                self._member(tf, ti, what)
            while stream.read(1 << 20):  # to the end: a gzip trailer is checked there
                pass
        except GzipError as exc:
            raise UnpackError(f"{what}: {exc}") from exc
        except (tarfile.TarError, EOFError) as exc:
            raise UnpackError(f"{what}: corrupt or truncated tar: {exc}") from exc
        except OSError as exc:
            if exc.filename is not None:
                raise UnpackError(f"{what}: {os.fsdecode(exc.filename)}: {exc.strerror}") from exc
            raise UnpackError(f"{what}: corrupt or truncated tar: {exc}") from exc
        finally:
            try:
                tf.close()
            except (tarfile.TarError, OSError, EOFError):
                pass

    def finish(self) -> UnpackStats:
        """Set directory modes and mtimes (deepest first, after all children exist)."""
        for rel in sorted(self._dirs, key=lambda r: -r.count(b"/") - (1 if r else 0)):
            meta = self._dirs[rel]
            full = self._full(rel)
            os.chmod(full, meta.mode)
            os.utime(full, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)
        return self.stats

    # -- one member ----------------------------------------------------------------------

    def _member(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, what: str) -> None:
        rel = _norm(ti.name, what)
        self.stats.entries += 1
        if not rel:  # the root itself
            if ti.isdir():
                self._apply_meta(rel, ti, is_link=False)
                self._dirs[rel] = _DirMeta(stat.S_IMODE(ti.mode), _mtime_ns(ti))
            return
        parent, _, base = rel.rpartition(b"/")
        if base == OCI_OPAQUE:
            self.stats.whiteouts += 1
            self._ensure_dir_path(parent)
            self._clear_lower(parent)
            return
        if base.startswith(OCI_WHITEOUT_PREFIX):
            self.stats.whiteouts += 1
            if base.startswith(
                OCI_WHITEOUT_PREFIX + OCI_WHITEOUT_PREFIX
            ):  # other AUFS metadata (.wh..wh.plnk, ...)
                return
            try:
                name = oci_whiteout_target(base)
            except BadWhiteout as exc:
                raise UnpackError(f"{what}: tar entry {ti.name!r}: {exc}") from None
            assert name is not None
            target = (parent + b"/" if parent else b"") + name
            if not self._is_dir_path(parent):
                return
            if target not in self._layer:
                self._remove(target)
            elif stat.S_ISDIR(os.lstat(self._full(target)).st_mode):
                self._clear_lower(target)  # this layer re-made it before the whiteout
            return
        self._ensure_dir_path(parent)
        full = self._full(rel)
        try:
            st: os.stat_result | None = os.lstat(full)
        except FileNotFoundError:
            st = None
        self._layer.add(rel)
        if ti.isdir():
            if st is None or not stat.S_ISDIR(st.st_mode):
                if st is not None:
                    self._remove(rel)
                os.mkdir(full, 0o700)
            self._apply_meta(rel, ti, is_link=False, replace_xattrs=True)
            self._dirs[rel] = _DirMeta(stat.S_IMODE(ti.mode), _mtime_ns(ti))
            return
        if st is not None:
            self._remove(rel)
        if ti.islnk():
            target = _norm(ti.linkname, what)
            if not self._is_dir_path(target.rpartition(b"/")[0]):
                raise UnpackError(
                    f"{what}: hard link {_show(rel)} to {_show(target)}, "
                    "whose parent is not a directory"
                )
            try:
                os.link(self._full(target), full, follow_symlinks=False)
            except FileNotFoundError:
                raise UnpackError(
                    f"{what}: hard link {_show(rel)} to {_show(target)}, which does not exist"
                ) from None
            return  # a hard link shares its target's metadata
        if ti.isreg():
            src = tf.extractfile(ti)
            fd = os.open(
                full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            with open(fd, "wb") as out:
                if src is not None:
                    shutil.copyfileobj(src, out, 1 << 20)
        elif ti.issym():
            os.symlink(ti.linkname.encode(_ENC, "surrogateescape"), full)
        elif ti.ischr() or ti.isblk():
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            try:
                os.mknod(full, kind | 0o600, os.makedev(ti.devmajor, ti.devminor))
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
                    raise
                log.warning("cannot create device node %s (%s): skipped", _show(rel), exc.strerror)
                self.stats.skipped_devices.append(_show(rel))
                self._layer.discard(rel)
                return
        elif ti.isfifo():
            os.mkfifo(full, 0o600)
        else:
            raise UnpackError(f"{what}: tar entry {ti.name!r} has unsupported type {ti.type!r}")
        self._apply_meta(rel, ti, is_link=ti.issym())
        ns = _mtime_ns(ti)
        os.utime(full, ns=(ns, ns), follow_symlinks=False)

    def _apply_meta(
        self, rel: bytes, ti: tarfile.TarInfo, *, is_link: bool, replace_xattrs: bool = False
    ) -> None:
        full = self._full(rel)
        os.chown(full, ti.uid, ti.gid, follow_symlinks=False)
        if not is_link and not ti.isdir():
            os.chmod(full, stat.S_IMODE(ti.mode))  # after chown, which clears setuid bits
        wanted = _xattrs(ti)
        if replace_xattrs:
            try:
                present = os.listxattr(full, follow_symlinks=False)
            except OSError:
                present = []
            for old in present:
                if os.fsencode(old) not in wanted:
                    try:
                        os.removexattr(full, old, follow_symlinks=False)
                    except OSError:
                        pass
        for name, value in wanted.items():
            try:
                os.setxattr(full, name, value, follow_symlinks=False)
            except OSError as exc:
                raise UnpackError(
                    f"{_show(rel)}: cannot set xattr "
                    f"{name.decode(_ENC, 'backslashreplace')}: "
                    f"{exc.strerror}"
                ) from exc

    # -- paths ---------------------------------------------------------------------------

    def _is_dir_path(self, rel: bytes) -> bool:
        """Whether every component of `rel` is a real directory (no symlink on the way)."""
        cur = b""
        for part in rel.split(b"/") if rel else []:
            cur = cur + b"/" + part if cur else part
            try:
                if not stat.S_ISDIR(os.lstat(self._full(cur)).st_mode):
                    return False
            except FileNotFoundError:
                return False
        return True

    def _ensure_dir_path(self, rel: bytes) -> None:
        """Make every component of `rel` a real directory (never follow a symlink) and mark
        it as entered by this layer."""
        if not rel:
            return
        cur = b""
        for part in rel.split(b"/"):
            cur = cur + b"/" + part if cur else part
            full = self._full(cur)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._layer.add(cur)
                continue
            if st is not None:
                self._remove(cur)
            os.mkdir(full, 0o755)
            os.chown(full, 0, 0)
            self._layer.add(cur)

    def _remove(self, rel: bytes) -> None:
        full = self._full(rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
            prefix = rel + b"/"
            for key in [k for k in self._dirs if k == rel or k.startswith(prefix)]:
                del self._dirs[key]
        else:
            os.unlink(full)

    def _clear_lower(self, rel: bytes) -> None:
        """Opaque directory: drop what lower layers put below `rel`, keep this layer's."""
        full = self._full(rel)
        for name in os.listdir(full):
            child = rel + b"/" + name if rel else name
            if child not in self._layer:
                self._remove(child)
            elif stat.S_ISDIR(os.lstat(self._full(child)).st_mode):
                self._clear_lower(child)
