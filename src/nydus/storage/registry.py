"""The registry backend: blobs are layers `GET /v2/<repo>/blobs/sha256:<id>`, read with
Range requests under the shared HTTP rules (`storage.http`); auth, token refresh and
redirects come from `nydus.oci.registry.RegistryClient`, configured by nydusd's `registry`
backend config (interfaces.md §4.2)."""

from __future__ import annotations

import os

import httpx

from nydus.config import BackendConfig, RegistryConfig
from nydus.errors import ConfigError, NydusError, StorageError
from nydus.oci.auth import Credentials, registry_reason
from nydus.oci.errors import AuthError, RegistryError, RegistryNotFound
from nydus.oci.registry import RegistryClient
from nydus.storage.http import HttpBackend, Transient

__all__ = ["RegistryBackend"]


class RegistryBackend(HttpBackend):
    type_name = "registry"

    def __init__(self, cfg: RegistryConfig) -> None:
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
        super().__init__(cfg, f"registry backend {cfg.host}/{cfg.repo}")
        self.repo = cfg.repo
        # the shared rules own retries and deadlines: the client tries each request once
        self.client = RegistryClient(
            cfg.host,
            insecure=cfg.use_http,
            skip_verify=cfg.skip_verify,
            credentials=creds,
            timeout=max(self.timeout, self.connect_timeout),
            retries=0,
            blob_url_scheme=cfg.blob_url_scheme,
            blob_redirected_host=cfg.blob_redirected_host,
            transport=self.transport,
        )
        self._sizes: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> RegistryBackend:
        s = cfg.settings
        if not isinstance(s, RegistryConfig):
            raise ConfigError("registry backend: missing registry settings")
        return cls(s)

    def _open_range(self, blob_id: str, offset: int, size: int) -> httpx.Response:
        with _client_errors():
            return self.client.open_blob_range(self.repo, "sha256:" + blob_id, offset, size)

    def _final_error(
        self, response: httpx.Response, body: bytes, blob_id: str, what: str
    ) -> StorageError:
        reason = registry_reason(
            httpx.Response(response.status_code, headers=response.headers, content=body)
        )
        status = response.status_code
        if status in (401, 403):
            return AuthError(f"{self.name}: authentication failed: {what}: {reason}", status=status)
        if status == 404:
            return RegistryNotFound(f"{self.name}: {what}: not found ({reason})", status=status)
        return RegistryError(f"{self.name}: {what}: {reason}", status=status)

    def size(self, blob_id: str) -> int:
        got = self._sizes.get(blob_id)
        if got is None:

            def stat() -> int | None:
                with _client_errors():
                    return self.client.stat_blob(self.repo, "sha256:" + blob_id)

            n = self.call(f"blob {blob_id} size", stat)
            if n is None:
                raise StorageError(f"{self.name}: blob {blob_id} not found")
            got = self._sizes[blob_id] = n
        return got

    def close(self) -> None:
        super().close()
        self.client.close()


class _client_errors:
    """Transient RegistryClient failures (its one try failed) are retried by the shared
    rules: a transport error as itself (so the rules name the cause), others as Transient."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, RegistryError) and exc.retryable:
            if isinstance(exc.__cause__, httpx.TransportError):
                raise exc.__cause__
            raise Transient(str(exc)) from exc
