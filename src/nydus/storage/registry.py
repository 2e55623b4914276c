"""The registry backend: blobs are layers `GET /v2/<repo>/blobs/sha256:<id>`, read with
Range requests through `nydus.oci.registry.RegistryClient` (auth, token refresh, redirects,
retries), configured by nydusd's `registry` backend config (interfaces.md §4.2)."""

from __future__ import annotations

import logging
import os

from nydus.config import BackendConfig, RegistryConfig
from nydus.errors import ConfigError, NydusError, StorageError
from nydus.oci.auth import Credentials
from nydus.oci.registry import RegistryClient
from nydus.storage.backend import BackendBase

__all__ = ["RegistryBackend"]

log = logging.getLogger(__name__)


class RegistryBackend(BackendBase):
    type_name = "registry"

    def __init__(self, cfg: RegistryConfig) -> None:
        super().__init__()
        if not cfg.host or not cfg.repo:
            raise ConfigError("registry backend: `host` and `repo` must be set")
        auth = os.environ.get("IMAGE_PULL_AUTH") or cfg.auth
        creds: Credentials | None = None
        try:
            if cfg.registry_token:
                creds = Credentials(registry_token=cfg.registry_token)
            elif auth:
                creds = Credentials.from_auth(auth, "registry backend auth")
        except NydusError as exc:
            raise ConfigError(str(exc)) from exc
        if cfg.proxy.url:
            log.warning(
                "registry backend: proxy %s is not supported, connecting directly", cfg.proxy.url
            )
        self.repo = cfg.repo
        self.client = RegistryClient(
            cfg.host,
            insecure=cfg.use_http,
            skip_verify=cfg.skip_verify,
            credentials=creds,
            timeout=float(max(cfg.timeout, cfg.connect_timeout, 1)),
            retries=cfg.retry_limit,
        )
        self._sizes: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> RegistryBackend:
        s = cfg.settings
        if not isinstance(s, RegistryConfig):
            raise ConfigError("registry backend: missing registry settings")
        return cls(s)

    def _read(self, blob_id: str, offset: int, size: int) -> bytes:
        try:
            return self.client.get_blob_range(self.repo, "sha256:" + blob_id, offset, size)
        except StorageError:
            raise
        except NydusError as exc:
            raise StorageError(str(exc)) from exc

    def size(self, blob_id: str) -> int:
        got = self._sizes.get(blob_id)
        if got is None:
            n = self.client.stat_blob(self.repo, "sha256:" + blob_id)
            if n is None:
                raise StorageError(
                    f"registry backend: blob {blob_id} not found in {self.client.host}/{self.repo}"
                )
            got = self._sizes[blob_id] = n
        return got

    def close(self) -> None:
        self.client.close()
