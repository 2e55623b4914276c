"""Blob backends: the `BlobBackend` protocol, upstream-shaped backend metrics, and the
registry of backend factories by config type name.

A backend serves raw byte ranges of blobs (exactly as stored: compressed chunks, CI array,
ToC...). Everything else — caching, decompression, digest checks — lives above it.
To add a backend type: `register_backend("registry", factory)` where `factory(config)` takes
the `nydus.config.BackendConfig` and returns a `BlobBackend`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from nydus.config import BackendConfig
from nydus.errors import ConfigError, NydusError, StorageError

__all__ = [
    "BackendBase",
    "BackendMetrics",
    "BlobBackend",
    "DeferredBackend",
    "available_backends",
    "create_backend",
    "register_backend",
    "size_bucket",
]

log = logging.getLogger(__name__)

#: block-size buckets <1K, 1K, 4K, 16K, 64K, 128K, 512K, 1M+ (upper bounds, exclusive)
_SIZE_BOUNDS = (1 << 10, 4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20)
#: backend latency buckets in ms: <=1, <=20, <=50, <=100, <=500, <=1000, <=2000, >2000
_BACKEND_LAT_MS = (1, 20, 50, 100, 500, 1000, 2000)


def size_bucket(size: int) -> int:
    for i, bound in enumerate(_SIZE_BOUNDS):
        if size < bound:
            return i
    return len(_SIZE_BOUNDS)


def latency_bucket(value: float, bounds: tuple[float, ...]) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


class BackendMetrics:
    """Counters of one backend, in the shape of `GET /api/v1/metrics/backend`."""

    def __init__(self, backend_type: str) -> None:
        self.backend_type = backend_type
        self._lock = threading.Lock()
        self.read_count = 0
        self.read_errors = 0
        self.read_amount_total = 0
        self.read_cumulative_latency_millis_total = 0
        self.read_cumulative_latency_millis_dist = [0] * 8
        self.read_count_block_size_dist = [0] * 8
        self.read_latency_sizes_dist = [[0] * 8 for _ in range(8)]

    def record_read(self, size: int, seconds: float) -> None:
        ms = seconds * 1000.0
        sb = size_bucket(size)
        lb = latency_bucket(ms, _BACKEND_LAT_MS)
        with self._lock:
            self.read_count += 1
            self.read_amount_total += size
            self.read_cumulative_latency_millis_total += int(ms)
            self.read_cumulative_latency_millis_dist[sb] += int(ms)
            self.read_count_block_size_dist[sb] += 1
            self.read_latency_sizes_dist[sb][lb] += 1

    def record_error(self) -> None:
        with self._lock:
            self.read_errors += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "backend_type": self.backend_type,
                "read_count": self.read_count,
                "read_errors": self.read_errors,
                "read_amount_total": self.read_amount_total,
                "read_cumulative_latency_millis_total": self.read_cumulative_latency_millis_total,
                "read_cumulative_latency_millis_dist": list(
                    self.read_cumulative_latency_millis_dist
                ),
                "read_count_block_size_dist": list(self.read_count_block_size_dist),
                "read_latency_sizes_dist": [list(r) for r in self.read_latency_sizes_dist],
            }


@runtime_checkable
class BlobBackend(Protocol):
    """Where blobs come from. Implementations must be safe to call from many threads."""

    type_name: str
    metrics: BackendMetrics

    def read(self, blob_id: str, offset: int, size: int) -> bytes:
        """Exactly `size` bytes of blob `blob_id` at `offset`, or raise StorageError."""
        ...

    def size(self, blob_id: str) -> int:
        """Size of blob `blob_id` in bytes."""
        ...

    def probe(self, blob_id: str) -> None:
        """Fail now (StorageError) if `blob_id` is certainly unreadable and that costs no
        request (a local file that is missing); otherwise do nothing."""
        ...

    def close(self) -> None: ...


class BackendBase:
    """Base class doing the metrics and error translation; subclasses implement `_read`."""

    type_name = "unknown"

    def __init__(self) -> None:
        self.metrics = BackendMetrics(self.type_name)

    def _read(self, blob_id: str, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def size(self, blob_id: str) -> int:
        raise NotImplementedError

    def probe(self, blob_id: str) -> None:
        return None  # a remote blob is only known by asking

    def read(self, blob_id: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        t0 = time.monotonic()
        try:
            data = self._read(blob_id, offset, size)
        except NydusError:
            self.metrics.record_error()
            raise
        except OSError as exc:
            self.metrics.record_error()
            raise StorageError(
                f"{self.type_name} backend: reading blob {blob_id} "
                f"[{offset}, +{size}) failed: {exc}"
            ) from exc
        if len(data) != size:
            self.metrics.record_error()
            raise StorageError(
                f"{self.type_name} backend: short read of blob {blob_id}: "
                f"{len(data)} of {size} bytes at {offset}"
            )
        self.metrics.record_read(size, time.monotonic() - t0)
        log.debug(
            "backend %s read blob %s offset %d size %d", self.type_name, blob_id, offset, size
        )
        return data

    def close(self) -> None:
        pass


BackendFactory = Callable[[BackendConfig], BlobBackend]
_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(type_name: str, factory: BackendFactory) -> None:
    """Make `create_backend` build backends of config type `type_name` with `factory`."""
    _FACTORIES[type_name] = factory


def available_backends() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def _not_yet(type_name: str, issue: str) -> BackendFactory:
    def factory(cfg: BackendConfig) -> BlobBackend:
        raise ConfigError(f"backend type {type_name!r} is not supported yet ({issue}); use localfs")

    return factory


_builtin_loaded = False


def _registry_backend(cfg: BackendConfig) -> BlobBackend:
    # imported on use: the HTTP client stack is not needed by localfs mounts
    from nydus.storage.registry import RegistryBackend

    return RegistryBackend.from_config(cfg)


def _object_store_backend(cfg: BackendConfig) -> BlobBackend:
    from nydus.storage.objstore import ObjectStoreBackend

    return ObjectStoreBackend.from_config(cfg)


def _load_builtin() -> None:
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    from nydus.storage.localfs import LocalFsBackend

    _FACTORIES.setdefault("localfs", LocalFsBackend.from_config)
    _FACTORIES.setdefault("registry", _registry_backend)
    _FACTORIES.setdefault("s3", _object_store_backend)
    _FACTORIES.setdefault("oss", _object_store_backend)
    for t in ("http-proxy", "localdisk"):
        _FACTORIES.setdefault(t, _not_yet(t, "not implemented"))


class DeferredBackend:
    """A remote backend built on its first use: its HTTP stack costs more to import than a
    daemon takes to mount, so nydusd mounts first (the first use is the background load of
    the blobs' chunk metadata right after). Errors of building it surface then."""

    def __init__(self, cfg: BackendConfig, factory: Callable[[BackendConfig], BlobBackend]):
        self.type_name = cfg.type
        self.retry_limit = int(getattr(cfg.settings, "retry_limit", 0) or 0)
        #: counted from the start (zeros until built); the built backend counts into it
        self.metrics = BackendMetrics(cfg.type)
        self._cfg = cfg
        self._factory = factory
        self._real: BlobBackend | None = None
        self._closed = False
        self._lock = threading.Lock()

    def real(self) -> BlobBackend:
        real = self._real
        if real is None:
            with self._lock:
                if self._closed:
                    raise StorageError(f"{self.type_name} backend: closed")
                if self._real is None:
                    built = self._factory(self._cfg)
                    self.metrics.backend_type = built.metrics.backend_type
                    built.metrics = self.metrics
                    self._real = built
                real = self._real
        return real

    def read(self, blob_id: str, offset: int, size: int) -> bytes:
        return self.real().read(blob_id, offset, size)

    def size(self, blob_id: str) -> int:
        return self.real().size(blob_id)

    def probe(self, blob_id: str) -> None:
        return None  # a remote blob is only known by asking

    def close(self) -> None:
        with self._lock:
            self._closed = True
            real = self._real
        if real is not None:
            real.close()


def create_backend(cfg: BackendConfig, deferred: bool = False) -> BlobBackend:
    """Build the backend a (validated) config asks for; ConfigError if impossible. With
    `deferred`, a remote one (anything but localfs) is built on its first use."""
    _load_builtin()
    factory = _FACTORIES.get(cfg.type)
    if factory is None:
        raise ConfigError(
            f"unknown backend type {cfg.type!r} (known: {', '.join(sorted(_FACTORIES))})"
        )
    if deferred and cfg.type != "localfs":
        return DeferredBackend(cfg, factory)
    return factory(cfg)
