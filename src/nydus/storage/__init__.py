"""Where file data comes from: blob backends, the blob cache, and the chunk device.

`ChunkDevice(sb, backend, cache_dir=..., validate=...)` reads file ranges chunk by chunk:
cache -> backend -> decompress -> verify digest -> cache.
"""

from nydus.storage.backend import (
    BackendBase,
    BackendMetrics,
    BlobBackend,
    available_backends,
    create_backend,
    register_backend,
)
from nydus.storage.blobmeta import BlobMeta, ChunkDesc, load_blob_meta
from nydus.storage.cache import BlobCache, CacheMetrics, ChunkMap
from nydus.storage.device import ChunkDevice
from nydus.storage.localfs import LocalFsBackend

__all__ = [
    "BackendBase",
    "BackendMetrics",
    "BlobBackend",
    "BlobCache",
    "BlobMeta",
    "CacheMetrics",
    "ChunkDesc",
    "ChunkDevice",
    "ChunkMap",
    "LocalFsBackend",
    "available_backends",
    "create_backend",
    "load_blob_meta",
    "register_backend",
]
