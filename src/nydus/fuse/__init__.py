"""FUSE: our own server of the kernel protocol over /dev/fuse (`session`, `protocol`), the
`Operations` a filesystem implements for it, `RafsOperations` over the FUSE-free core, and
the blob-view filesystem the erofs driver mounts privately (`blobview`)."""

from nydus.fuse.ops import DEFAULT_TIMEOUT, Operations, RafsOperations
from nydus.fuse.session import FuseError, FuseSession, mount_options

__all__ = [
    "DEFAULT_TIMEOUT",
    "FuseError",
    "FuseSession",
    "Operations",
    "RafsOperations",
    "mount_options",
]
