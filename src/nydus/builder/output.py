"""Output files written atomically: a temporary name beside the target, renamed on
success and removed on failure. FIFOs and character devices are streamed directly."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import BinaryIO

from nydus.errors import BuildError


def is_stream(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


class AtomicFile:
    """Open lazily with `open()`, then `commit(final_path)` or `discard()`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.stream = is_stream(target)
        self.tmp: str | None = None
        self.fh: BinaryIO | None = None

    def open(self) -> BinaryIO:
        if self.fh is None:
            try:
                if self.stream:
                    self.fh = open(self.target, "wb")  # noqa: SIM115
                else:
                    d = os.path.dirname(os.path.abspath(self.target))
                    fd, self.tmp = tempfile.mkstemp(prefix=".nydus-tmp-", dir=d)
                    self.fh = os.fdopen(fd, "wb")
            except OSError as exc:
                raise BuildError(f"cannot write {self.target}: {exc.strerror}") from exc
        return self.fh

    def commit(self, final: str | None = None) -> None:
        try:
            self._commit(final)
        except OSError as exc:
            raise BuildError(f"cannot write {final or self.target}: {exc.strerror}") from exc

    def _commit(self, final: str | None) -> None:
        if self.fh is not None:
            self.fh.flush()
            if not self.stream:
                os.fsync(self.fh.fileno())
            self.fh.close()
        if self.tmp is not None:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, final or self.target)
            self.tmp = None

    def discard(self) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None


def write_atomic(path: str, data: bytes) -> None:
    f = AtomicFile(path)
    try:
        f.open().write(data)
        f.commit()
    except BaseException:
        f.discard()
        raise
