"""The FUSE-free filesystem core: `RafsFs(sb, device, options)` answers lookup, getattr,
readdir, read, readlink, xattrs and statfs by inode number, and keeps upstream-shaped
per-operation metrics."""

from nydus.fs.core import ChunkReader, DirItem, FsError, FsOptions, RafsFs, StatFs
from nydus.fs.metrics import FOPS, FsMetrics

__all__ = [
    "FOPS",
    "ChunkReader",
    "DirItem",
    "FsError",
    "FsMetrics",
    "FsOptions",
    "RafsFs",
    "StatFs",
]
