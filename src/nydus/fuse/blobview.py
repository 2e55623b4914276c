"""The blob-view filesystem the erofs driver mounts privately: a root directory holding one
read-only regular file per blob, named by its index in the blob table ("0", "1", ...),
whose bytes are the blob's uncompressed view (`nydus.storage.view`). The kernel's EROFS
reads these files as the image's devices.
"""

from __future__ import annotations

import errno
import logging
import stat
from collections.abc import Iterator

from nydus.errors import NydusError
from nydus.format.rafs import Attr
from nydus.fs import FsMetrics, StatFs
from nydus.fs.pattern import AccessPattern
from nydus.fuse.ops import DEFAULT_TIMEOUT, DirRecord, Operations
from nydus.fuse.protocol import ROOT_ID, OpenFlags
from nydus.storage.view import BlobViews

__all__ = ["BlobViewOperations"]

log = logging.getLogger(__name__)

_FIRST = ROOT_ID + 1  # node id of blob 0


class BlobViewOperations(Operations):
    """Node 1 is the directory; node 2 + i is blob i's file. Reads are accounted in
    `metrics` with the file's node id as the inode number."""

    def __init__(
        self,
        views: BlobViews,
        metrics: FsMetrics,
        pattern: AccessPattern | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        self.views = views
        self.metrics = metrics
        #: the access-pattern recorder (`access_pattern`): blob reads map back to files
        self.pattern = pattern
        self.count = len(views.blobs)
        self.entry_timeout = timeout
        self.attr_timeout = timeout
        self._root = Attr(ROOT_ID, stat.S_IFDIR | 0o500, 0, 0, 0, 0, 0, 2)

    @staticmethod
    def name(blob_index: int) -> str:
        return str(blob_index)

    def _blob(self, node: int) -> int:
        i = node - _FIRST
        if not 0 <= i < self.count:
            raise OSError(errno.ENOENT, f"no node {node}")
        return i

    def _attr(self, node: int) -> Attr:
        if node == ROOT_ID:
            return self._root
        i = self._blob(node)
        return Attr(node, stat.S_IFREG | 0o400, self.views.size(i), 0, 0, 0, 0, 1)

    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr] | None:
        if parent != ROOT_ID:
            raise OSError(errno.ENOTDIR, "not a directory")
        if name in (b".", b".."):
            return ROOT_ID, self._root
        if not name.isdigit() or (len(name) > 1 and name.startswith(b"0")):
            return None
        node = int(name) + _FIRST
        if not _FIRST <= node < _FIRST + self.count:
            return None
        return node, self._attr(node)

    def getattr(self, node: int) -> Attr:
        return self._attr(node)

    def opendir(self, node: int) -> tuple[int, int]:
        if node != ROOT_ID:
            raise OSError(errno.ENOTDIR, "not a directory")
        return node, OpenFlags.CACHE_DIR | OpenFlags.KEEP_CACHE

    def readdir(self, fh: int, offset: int, plus: bool) -> Iterator[DirRecord]:
        if offset <= 0:
            yield b".", ROOT_ID, self._root, 1
        if offset <= 1:
            yield b"..", ROOT_ID, self._root, 2
        for i in range(max(offset - 2, 0), self.count):
            node = i + _FIRST
            yield self.name(i).encode(), node, self._attr(node), i + 3

    def open(self, node: int, flags: int) -> tuple[int, int]:
        if node == ROOT_ID:
            raise OSError(errno.EISDIR, "is a directory")
        self._blob(node)
        self.metrics.record_open()
        return node, OpenFlags.KEEP_CACHE

    def release(self, fh: int) -> None:
        self.metrics.record_release()

    def read(self, fh: int, offset: int, size: int) -> bytes:
        i = self._blob(fh)
        try:
            with self.metrics.op("read", fh):
                data = self.views.read(i, offset, size)
        except NydusError as exc:
            log.warning(
                "blob %s: read of %d bytes at %d failed: %s",
                self.views.blobs[i].blob_id,
                size,
                offset,
                exc,
            )
            raise
        self.metrics.record_read(fh, len(data))
        if self.pattern is not None:
            self.pattern.record_blob_read(i, offset, len(data))
        return data

    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | None:
        i = fh - _FIRST
        if not 0 <= i < self.count:
            return None
        try:
            data = self.views.read_memory(i, offset, size)
        except NydusError:
            return None  # `read` reports it
        if data is not None:
            self.metrics.record_op("read", fh, 0)
            self.metrics.record_read(fh, len(data))
            if self.pattern is not None:
                self.pattern.record_blob_read(i, offset, len(data))
        return data

    def statfs(self) -> StatFs:
        blocks = sum((self.views.size(i) + 4095) // 4096 for i in range(self.count))
        return StatFs(4096, 4096, blocks, 0, 0, self.count + 1, 0, 255)
