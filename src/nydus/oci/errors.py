"""Errors of the OCI layer: bad references and manifests, registry and auth failures."""

from __future__ import annotations

import errno

from nydus.errors import FormatError, NydusError, StorageError

__all__ = [
    "AuthError",
    "InvalidManifest",
    "InvalidReference",
    "PlatformNotFound",
    "RegistryError",
    "RegistryNotFound",
]


class InvalidReference(NydusError):
    """An image reference that does not parse (`ubuntu:16.04`, `host:5000/repo@sha256:...`)."""

    errno = errno.EINVAL


class InvalidManifest(FormatError):
    """Manifest or index JSON that is not valid, or not the kind expected."""


class RegistryError(StorageError):
    """A registry request that failed; the message names host, repository and object.

    `status` is the HTTP status if there was one; `retryable` says the failure was transient
    (429, 5xx, a dropped connection) and retries ran out.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class AuthError(RegistryError):
    """Credentials missing, refused or not allowed for the requested scope."""

    errno = errno.EACCES


class RegistryNotFound(RegistryError):
    """A manifest, tag, blob or repository that the registry does not have."""

    errno = errno.ENOENT


class PlatformNotFound(NydusError):
    """An index without a manifest for the requested platform."""

    errno = errno.ENOENT
