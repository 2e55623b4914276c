"""The localfs backend: blobs are files `<dir>/<blob_id>` (or one `blob_file` for all)."""

from __future__ import annotations

import errno
import os
import threading

from nydus.config import BackendConfig, LocalFsConfig
from nydus.errors import ConfigError, StorageError
from nydus.storage.backend import BackendBase
from nydus.utils.paths import not_a_directory

__all__ = ["LocalFsBackend"]


class LocalFsBackend(BackendBase):
    """Reads blobs from a local directory with `pread`; file descriptors are cached."""

    type_name = "localfs"

    def __init__(self, dir: str = "", blob_file: str = "", alt_dirs: tuple[str, ...] = ()) -> None:
        super().__init__()
        if not dir and not blob_file:
            raise ConfigError("localfs backend: `dir` or `blob_file` must be set")
        if blob_file:
            if not os.path.isfile(blob_file):
                raise ConfigError(f"localfs backend: blob file {blob_file} does not exist")
            blob_file = os.path.realpath(blob_file)
        if dir:
            why = not_a_directory(dir)
            if why is not None:
                raise ConfigError(f"localfs backend: blob directory {dir} {why}")
            dir = os.path.realpath(dir)
        self.dir = dir
        self.blob_file = blob_file
        self.alt_dirs = tuple(alt_dirs)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> LocalFsBackend:
        s = cfg.settings
        if not isinstance(s, LocalFsConfig):
            raise ConfigError("localfs backend: missing localfs settings")
        return cls(dir=s.dir, blob_file=s.blob_file, alt_dirs=s.alt_dirs)

    def blob_path(self, blob_id: str) -> str:
        """The file holding `blob_id`, following nydusd's lookup order."""
        if self.blob_file:
            return self.blob_file
        if not blob_id or "/" in blob_id or blob_id in (".", ".."):
            raise StorageError(f"localfs backend: invalid blob id {blob_id!r}")
        path = os.path.join(self.dir, blob_id)
        if _non_empty_file(path) or not self.alt_dirs:
            return path
        for alt in self.alt_dirs:
            cand = os.path.join(alt, blob_id)
            if _non_empty_file(cand):
                return cand
        return path

    def probe(self, blob_id: str) -> None:
        self._fd(blob_id)

    def _fd(self, blob_id: str) -> int:
        fd = self._fds.get(blob_id)
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(blob_id)
            if fd is None:
                path = self.blob_path(blob_id)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    err = StorageError(
                        f"localfs backend: cannot open blob {blob_id} at {path}: {exc.strerror}"
                    )
                    if exc.errno == errno.ENOENT:
                        err.errno = errno.ENOENT
                    raise err from exc
                self._fds[blob_id] = fd
            return fd

    def _read(self, blob_id: str, offset: int, size: int) -> bytes:
        fd = self._fd(blob_id)
        data = os.pread(fd, size, offset)
        if len(data) < size:  # pread may return less than asked near EOF only
            rest = os.pread(fd, size - len(data), offset + len(data)) if data else b""
            data += rest
        return data

    def size(self, blob_id: str) -> int:
        try:
            return os.fstat(self._fd(blob_id)).st_size
        except OSError as exc:
            raise StorageError(f"localfs backend: stat of blob {blob_id} failed: {exc}") from exc

    def exists(self, blob_id: str) -> bool:
        return _non_empty_file(self.blob_path(blob_id))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()


def _non_empty_file(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size > 0
