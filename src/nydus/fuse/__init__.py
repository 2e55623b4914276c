"""FUSE adapter: the only package that imports pyfuse3 and trio."""

from nydus.fuse.ops import DEFAULT_TIMEOUT, RafsOperations
from nydus.fuse.session import FuseError, FuseSession, mount_options

__all__ = ["DEFAULT_TIMEOUT", "FuseError", "FuseSession", "RafsOperations", "mount_options"]
