"""Chunk digesters (blake3, sha256) by name and by on-disk id."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from nydus.errors import FormatError


class Digester(IntEnum):
    BLAKE3 = 0
    SHA256 = 1

    @classmethod
    def from_name(cls, name: str) -> Digester:
        try:
            return {"blake3": cls.BLAKE3, "sha256": cls.SHA256}[name.lower()]
        except KeyError:
            raise FormatError(f"unknown digester {name!r} (expected blake3 or sha256)") from None

    @classmethod
    def known(cls, value: int) -> bool:
        """Whether `value` is the on-disk id of one of these."""
        return value in cls._value2member_map_

    @property
    def label(self) -> str:
        return self.name.lower()

    def hasher(self) -> Callable[[bytes | memoryview], bytes]:
        return _blake3 if self is Digester.BLAKE3 else _sha256

    def digest(self, data: bytes | memoryview) -> bytes:
        return self.hasher()(data)

    def new(self) -> Any:
        """A fresh incremental hasher (`update`, `digest`) of this algorithm."""
        if self is Digester.BLAKE3:
            import blake3

            return blake3.blake3()
        return hashlib.sha256()


def _blake3(data: bytes | memoryview) -> bytes:
    import blake3  # on first use: importing it costs milliseconds at a daemon's start

    return blake3.blake3(data).digest()


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> tuple[str, int]:
    """sha256 (hex) and size of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
            size += len(b)
    return h.hexdigest(), size
