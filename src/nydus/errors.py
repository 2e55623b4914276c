"""One error root for the project; subclasses carry an errno for FUSE and the API.

The kinds a service raises for a bad request (`InvalidArgument`, `NotFound`, `Unsupported`,
`NotReady`) say what went wrong, not how a protocol reports it: `daemon/api.py` maps them to
HTTP statuses, FUSE to their errno.
"""

from __future__ import annotations

import errno


class NydusError(Exception):
    """Root of every error this project raises on purpose."""

    errno: int = errno.EIO


class FormatError(NydusError):
    """Bytes that do not form a valid on-disk record (bootstrap, blob meta, ToC...)."""

    errno = errno.EINVAL


class InvalidArgument(NydusError):
    """A request or value that is not acceptable (a bad parameter, an unknown key)."""

    errno = errno.EINVAL


class Unsupported(NydusError):
    """A well-formed request for something this implementation does not do."""

    errno = errno.EOPNOTSUPP


class NotReady(NydusError):
    """A request that the current state does not allow yet (e.g. the daemon is not running)."""

    errno = errno.EAGAIN


class BuildError(NydusError):
    """A source tree or layer that cannot be built into an image."""

    errno = errno.EINVAL


class ConfigError(InvalidArgument):
    """An invalid nydusd configuration or command line value."""

    errno = errno.EINVAL


class StorageError(NydusError):
    """A blob could not be read from its backend or cache."""

    errno = errno.EIO


class DigestMismatch(StorageError):
    """A chunk's data does not match its recorded digest."""

    errno = errno.EIO


class NotFound(NydusError):
    """Something named that does not exist: a path, an inode, a mounted instance."""

    errno = errno.ENOENT
