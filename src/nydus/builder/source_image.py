"""An existing image as a source: its bootstrap and a chunk device over its blobs, for the
commands that read file data back (unpack, export, compact).

The blobs come from a directory (`-D DIR`, localfs), one blob file (`-b BLOB`), or any
backend nydusd knows (`--backend-type T --backend-config JSON`). Every chunk read is
verified against its digest where the image records one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Self

from nydus.builder.build import load_bootstrap
from nydus.config import BackendConfig, LocalFsConfig, backend_config
from nydus.errors import BuildError, ConfigError
from nydus.format.rafs import RafsSuper
from nydus.storage import ChunkDevice, create_backend
from nydus.storage.backend import BlobBackend

__all__ = ["ImageSource", "open_image", "source_backend"]

log = logging.getLogger(__name__)


@dataclass
class ImageSource:
    """A loaded bootstrap (`sb`) and the device that reads its file data; close() it."""

    path: str
    sb: RafsSuper
    backend: BlobBackend | None
    device: ChunkDevice | None

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
        if self.backend is not None:
            self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def source_backend(
    *,
    blob_dir: str | None = None,
    blob: str | None = None,
    backend_type: str | None = None,
    backend_config_text: str | None = None,
    backend_config_doc: Any = None,
) -> BackendConfig | None:
    """The backend config the flags name (None: none given)."""
    given = [x for x in (blob_dir, blob, backend_type) if x]
    if len(given) > 1:
        raise BuildError("give only one of --blob-dir, --blob and --backend-type")
    if blob_dir:
        return BackendConfig("localfs", LocalFsConfig(dir=blob_dir))
    if blob:
        return BackendConfig("localfs", LocalFsConfig(blob_file=blob))
    if backend_type:
        doc = backend_config_doc if backend_config_doc is not None else backend_config_text
        if doc is None:
            raise BuildError("--backend-type needs --backend-config or --backend-config-file")
        try:
            return backend_config(backend_type, doc, "--backend-config")
        except ConfigError as exc:
            raise BuildError(str(exc)) from exc
    return None


def open_image(
    bootstrap: str,
    backend: BackendConfig | None,
    *,
    need_data: bool = True,
    memory_cache: int = 16 << 20,
) -> ImageSource:
    """Load `bootstrap` and a validating chunk device over `backend`."""
    sb = load_bootstrap(bootstrap)
    if backend is None:
        if need_data and sb.blobs:
            raise BuildError(
                "the image has file data: give --blob-dir, --blob or --backend-type "
                "with --backend-config"
            )
        return ImageSource(bootstrap, sb, None, None)
    try:
        be = create_backend(backend)
    except ConfigError as exc:
        raise BuildError(str(exc)) from exc
    device = ChunkDevice(sb, be, validate=True, memory_cache=memory_cache, readahead_chunks=0)
    return ImageSource(bootstrap, sb, be, device)
