"""The snapshotter's domain errors; `service.py` maps each to its gRPC status code, which
containerd's proxy client turns back into its own errdefs (NotFound, AlreadyExists...)."""

from __future__ import annotations

import errno

from nydus.errors import NydusError


class SnapshotError(NydusError):
    """Root of the errors a Snapshots call answers with."""

    errno = errno.EIO


class SnapshotNotFound(SnapshotError):
    """No snapshot by that key or name."""

    errno = errno.ENOENT


class SnapshotExists(SnapshotError):
    """A snapshot by that key or name exists already (also: a remote layer was skipped)."""

    errno = errno.EEXIST


class SnapshotPrecondition(SnapshotError):
    """The operation does not fit the snapshot's state (commit of a committed one, remove of a
    parent, a parent that is not committed...)."""

    errno = errno.EBUSY


class SnapshotInvalid(SnapshotError):
    """A malformed request: empty key, bad filter, bad update mask, bad Nydus image."""

    errno = errno.EINVAL


class DaemonFailure(SnapshotError):
    """nydusd could not be started, attached or reached for a Nydus image."""

    errno = errno.EIO
