"""Where `nydusify convert` pushes blob layers: the target registry (default), or an
external backend (`--backend-type localfs|s3|oss --backend-config[-file]`), in which case
the manifest lists only the bootstrap layer and nydusd reads the blobs from that backend
(interfaces.md §1.5, §2.1). Blobs are named by their digest hex: `<dir>/<id>` or the object
`<object_prefix><id>`."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Protocol

from nydus.config import parse_backend_config
from nydus.errors import NydusError
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

__all__ = ["BLOB_BACKEND_TYPES", "BlobTarget", "open_blob_target"]

log = logging.getLogger("nydus.converter")

BLOB_BACKEND_TYPES = ("localfs", "oss", "s3")


class BlobTarget(Protocol):
    #: True when blobs live outside the registry (the manifest lists only the bootstrap)
    external: bool

    def push(self, digest: str, path: str) -> None: ...

    def close(self) -> None: ...


class RegistryTarget:
    external = False

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client, self.ref = client, ref

    def push(self, digest: str, path: str) -> None:
        log.info("Pushing blob layer %s", digest)
        self.client.push_blob(self.ref.repo, digest, path, os.path.getsize(path))

    def close(self) -> None:
        pass


class LocalFsTarget:
    external = True

    def __init__(self, directory: str, force: bool) -> None:
        self.dir, self.force = directory, force

    def push(self, digest: str, path: str) -> None:
        os.makedirs(self.dir, exist_ok=True)
        dest = os.path.join(self.dir, digest.split(":", 1)[1])
        if (
            not self.force
            and os.path.exists(dest)
            and os.path.getsize(dest) == os.path.getsize(path)
        ):
            log.info("Skip pushing blob %s: it exists in %s", digest, self.dir)
            return
        log.info("Pushing blob layer %s to %s", digest, self.dir)
        fd, tmp = tempfile.mkstemp(prefix=".blob.", dir=self.dir)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise

    def close(self) -> None:
        pass


class ObjectStoreTarget:
    external = True

    def __init__(self, backend_type: str, config: dict[str, Any], force: bool) -> None:
        from nydus.storage.objstore import ObjectStoreClient, store_from_config

        cfg = parse_backend_config(backend_type, config, f"--backend-config ({backend_type})")
        self.store = store_from_config(cfg)
        self.client = ObjectStoreClient(self.store, verify=not cfg.settings.skip_verify)
        self.force = force

    def push(self, digest: str, path: str) -> None:
        blob_id = digest.split(":", 1)[1]
        key = self.store.key(blob_id)
        if not self.force and self.client.exists(key):
            log.info("Skip pushing blob %s: object %s exists", digest, key)
            return
        log.info("Pushing blob layer %s to %s object %s", digest, self.store.describe(), key)
        self.client.put_file(key, path, blob_id)

    def close(self) -> None:
        self.client.close()


def open_blob_target(
    backend_type: str | None,
    backend_config: dict[str, Any] | None,
    client: RegistryClient,
    ref: Reference,
    force: bool = False,
) -> BlobTarget:
    """The target that `--backend-type` / `--backend-config` ask for (the registry without)."""
    if not backend_type:
        return RegistryTarget(client, ref)
    if backend_type not in BLOB_BACKEND_TYPES:
        raise NydusError(
            f"--backend-type should be one of {', '.join(BLOB_BACKEND_TYPES)}, not {backend_type!r}"
        )
    if not isinstance(backend_config, dict):
        raise NydusError(f"--backend-type {backend_type} needs a JSON object as backend config")
    if backend_type == "localfs":
        directory = backend_config.get("dir")
        if not isinstance(directory, str) or not directory:
            raise NydusError('--backend-type localfs needs a config {"dir": DIR}')
        return LocalFsTarget(directory, force)
    return ObjectStoreTarget(backend_type, backend_config, force)
