"""One error root for the project; subclasses carry an errno for FUSE and the API."""

from __future__ import annotations

import errno


class NydusError(Exception):
    """Root of every error this project raises on purpose."""

    errno: int = errno.EIO


class FormatError(NydusError):
    """Bytes that do not form a valid on-disk record (bootstrap, blob meta, ToC...)."""

    errno = errno.EINVAL


class BuildError(NydusError):
    """A source tree or layer that cannot be built into an image."""

    errno = errno.EINVAL


class ConfigError(NydusError):
    """An invalid nydusd configuration or command line value."""

    errno = errno.EINVAL


class StorageError(NydusError):
    """A blob could not be read from its backend or cache."""

    errno = errno.EIO


class DigestMismatch(StorageError):
    """A chunk's data does not match its recorded digest."""

    errno = errno.EIO


class NotFound(NydusError):
    """A path or inode that does not exist in the filesystem."""

    errno = errno.ENOENT
