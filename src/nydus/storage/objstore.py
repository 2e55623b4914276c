"""Object-store backends: blobs are objects `<object_prefix><blob_id>` of one bucket.

`ObjectStore` knows a bucket's addressing and request signing (`S3Store`: AWS SigV4,
path-style `scheme://endpoint/bucket/key` as upstream, or virtual-host style when
`endpoint` already starts with `<bucket_name>.`; `OssStore`: OSS V1,
`scheme://bucket.endpoint/key`). `ObjectStoreBackend` reads ranges under the shared HTTP
rules (`storage.http`) for nydusd; `ObjectStoreClient` checks and uploads objects for
nydusify. Keys are never logged; error replies are reduced to their S3/OSS `Code` and
`Message`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Self
from urllib.parse import quote

import httpx

from nydus import __version__
from nydus.config import BackendConfig, OssConfig, S3Config
from nydus.errors import ConfigError, StorageError
from nydus.storage.http import HttpBackend, Transient
from nydus.storage.signing import (
    EMPTY_SHA256,
    amz_date,
    http_date,
    oss_authorization,
    sigv4_authorization,
)

__all__ = [
    "ObjectStore",
    "ObjectStoreBackend",
    "ObjectStoreClient",
    "OssStore",
    "S3Store",
    "store_from_config",
]

log = logging.getLogger(__name__)

S3_DEFAULT_ENDPOINT = "s3.amazonaws.com"
#: the largest object one PUT may create (S3's limit)
SINGLE_PUT_MAX = 5 << 30
PIECE = 1 << 20


class ObjectStore:
    """One bucket of an object store: URLs and signed requests for its objects."""

    kind = ""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        scheme: str,
        prefix: str,
        access_key_id: str,
        access_key_secret: str,
    ) -> None:
        if "://" in endpoint or "/" in endpoint.rstrip("/"):
            raise ConfigError(
                f"{self.kind} backend: endpoint {endpoint!r} must be host[:port] "
                "without a scheme or path (the scheme goes in `scheme`)"
            )
        if scheme not in ("http", "https"):
            raise ConfigError(f"{self.kind} backend: scheme {scheme!r} must be http or https")
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.scheme = scheme
        self.prefix = prefix
        self.access_key_id = access_key_id
        self._secret = access_key_secret

    def __repr__(self) -> str:  # never the secret
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return f"bucket {self.bucket} at {self.scheme}://{self.endpoint}"

    def key(self, blob_id: str) -> str:
        return self.prefix + blob_id

    def host_and_path(self, key: str) -> tuple[str, str]:
        raise NotImplementedError

    def _sign(
        self,
        method: str,
        path: str,
        key: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        payload_sha256: str,
    ) -> None:
        raise NotImplementedError

    def request(
        self,
        client: httpx.Client,
        method: str,
        key: str,
        *,
        headers: dict[str, str] | None = None,
        query: Sequence[tuple[str, str]] = (),
        content: bytes | Iterator[bytes] | None = None,
        payload_sha256: str = EMPTY_SHA256,
    ) -> httpx.Request:
        """A signed request for object `key` (or the bucket itself when `key` is "")."""
        host, path = self.host_and_path(key)
        hdrs = {"Host": host, **(headers or {})}
        if self.access_key_id:
            self._sign(method, path, key, query, hdrs, payload_sha256)
        url = f"{self.scheme}://{host}{quote(path, safe='/-_.~')}"
        return client.build_request(method, url, params=list(query), headers=hdrs, content=content)


class S3Store(ObjectStore):
    kind = "s3"

    def __init__(self, cfg: S3Config) -> None:
        super().__init__(
            cfg.endpoint or S3_DEFAULT_ENDPOINT,
            cfg.bucket_name,
            cfg.scheme or "https",
            cfg.object_prefix,
            cfg.access_key_id,
            cfg.access_key_secret,
        )
        self.region = cfg.region
        # virtual-host style when the endpoint names the bucket already
        self.virtual_host = self.endpoint.startswith(self.bucket + ".")

    def host_and_path(self, key: str) -> tuple[str, str]:
        if self.virtual_host:
            return self.endpoint, "/" + key
        return self.endpoint, f"/{self.bucket}/{key}" if key else f"/{self.bucket}"

    def _sign(
        self,
        method: str,
        path: str,
        key: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        payload_sha256: str,
    ) -> None:
        headers["x-amz-date"] = amz_date()
        headers["x-amz-content-sha256"] = payload_sha256
        headers["Authorization"] = sigv4_authorization(
            method,
            path,
            query,
            headers,
            payload_sha256,
            access_key_id=self.access_key_id,
            secret_access_key=self._secret,
            region=self.region,
        )


class OssStore(ObjectStore):
    kind = "oss"

    def __init__(self, cfg: OssConfig) -> None:
        super().__init__(
            cfg.endpoint,
            cfg.bucket_name,
            cfg.scheme or "https",
            cfg.object_prefix,
            cfg.access_key_id,
            cfg.access_key_secret,
        )

    def host_and_path(self, key: str) -> tuple[str, str]:
        return f"{self.bucket}.{self.endpoint}", "/" + key

    def _sign(
        self,
        method: str,
        path: str,
        key: str,
        query: Sequence[tuple[str, str]],
        headers: dict[str, str],
        payload_sha256: str,
    ) -> None:
        headers["Date"] = http_date()
        headers["Authorization"] = oss_authorization(
            method,
            self.bucket,
            key,
            headers,
            access_key_id=self.access_key_id,
            access_key_secret=self._secret,
            query=query,
        )


def store_from_config(cfg: BackendConfig) -> ObjectStore:
    s = cfg.settings
    if isinstance(s, S3Config):
        return S3Store(s)
    if isinstance(s, OssConfig):
        return OssStore(s)
    raise ConfigError(f"backend type {cfg.type!r} is not an object store (s3, oss)")


_XML_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,300})</\1>")


def describe_error(response: httpx.Response, body: bytes) -> tuple[str, str]:
    """(`Code`, one-line reason) of an S3/OSS error reply."""
    fields = {
        m.group(1).decode(): m.group(2).decode("utf-8", "replace")
        for m in _XML_FIELD.finditer(body)
    }
    code = fields.get("Code", "")
    text = f"HTTP {response.status_code}"
    if code:
        text += f" {code}"
    if fields.get("Message"):
        text += f": {fields['Message']}"
    elif not code and response.reason_phrase:
        text += f" {response.reason_phrase}"
    return code, text


def object_error(
    store: ObjectStore, response: httpx.Response, body: bytes, key: str, what: str
) -> StorageError:
    """The error for a reply retrying cannot fix, naming bucket and key."""
    code, reason = describe_error(response, body)
    status = response.status_code
    if status in (401, 403):
        exc: StorageError = StorageError(
            f"{store.kind} backend: authentication failed for {store.describe()} "
            f"(check access_key_id / access_key_secret): {what}: {reason}"
        )
        exc.errno = errno.EACCES
        return exc
    if status == 404:
        if code == "NoSuchBucket":
            exc = StorageError(f"{store.kind} backend: {store.describe()} does not exist: {reason}")
            exc.errno = errno.ENOENT
            return exc
        exc = StorageError(
            f"{store.kind} backend: object {key} not found in {store.describe()}: {reason}"
        )
        exc.errno = errno.ENOENT
        return exc
    return StorageError(f"{store.kind} backend: {store.describe()}: {what}: {reason}")


class ObjectStoreBackend(HttpBackend):
    """nydusd's `s3` / `oss` backend."""

    def __init__(self, store: ObjectStore, cfg: S3Config | OssConfig) -> None:
        super().__init__(cfg, f"{store.kind} backend {store.describe()}")
        self.type_name = store.kind
        self.metrics.backend_type = store.kind
        self.store = store
        self.http = httpx.Client(
            transport=self.transport,
            timeout=httpx.Timeout(max(self.timeout, self.connect_timeout)),
            headers={"User-Agent": f"nydus-py/{__version__}"},
        )
        self._sizes: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> ObjectStoreBackend:
        s = cfg.settings
        if not isinstance(s, (S3Config, OssConfig)):
            raise ConfigError(f"{cfg.type} backend: missing settings")
        s.validate(f"backend {cfg.type}")
        return cls(store_from_config(cfg), s)

    def _open_range(self, blob_id: str, offset: int, size: int) -> httpx.Response:
        headers = {"Range": f"bytes={offset}-{offset + size - 1}", "Accept-Encoding": "identity"}
        req = self.store.request(self.http, "GET", self.store.key(blob_id), headers=headers)
        return self.http.send(req, stream=True)

    def _final_error(
        self, response: httpx.Response, body: bytes, blob_id: str, what: str
    ) -> StorageError:
        return object_error(self.store, response, body, self.store.key(blob_id), what)

    def size(self, blob_id: str) -> int:
        got = self._sizes.get(blob_id)
        if got is not None:
            return got
        key = self.store.key(blob_id)
        what = f"blob {blob_id} size"

        def head() -> int:
            response = self.http.send(self.store.request(self.http, "HEAD", key), stream=True)
            try:
                if response.status_code == 200:
                    length = response.headers.get("content-length", "")
                    if not length.isdigit():
                        raise StorageError(f"{self.name}: {what}: no Content-Length")
                    return int(length)
                if response.status_code == 429 or response.status_code >= 500:
                    raise Transient(f"HTTP {response.status_code}")
                raise object_error(self.store, response, b"", key, what)
            finally:
                response.close()

        got = self._sizes[blob_id] = self.call(what, head)
        return got

    def close(self) -> None:
        super().close()
        self.http.close()


class ObjectStoreClient:
    """nydusify's side: does an object exist, upload a blob file (bounded retries)."""

    def __init__(
        self, store: ObjectStore, *, timeout: float = 300.0, retries: int = 3, verify: bool = True
    ) -> None:
        self.store = store
        self.retries = retries
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=30.0),
            verify=verify,
            headers={"User-Agent": f"nydus-py/{__version__}"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, key: str, what: str, **kwargs: object) -> httpx.Response:
        last = ""
        for attempt in range(self.retries + 1):
            try:
                req = self.store.request(self.http, method, key, **kwargs)  # type: ignore[arg-type]
                response = self.http.send(req)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                last = describe_error(response, response.content)[1]
            if attempt < self.retries:
                log.warning("%s: %s; retry %d/%d", what, last, attempt + 1, self.retries)
                time.sleep(min(5.0, 0.5 * 2**attempt))
        raise StorageError(f"{self.store.kind} backend {self.store.describe()}: {what}: {last}")

    def exists(self, key: str) -> bool:
        what = f"HEAD object {key}"
        response = self._send("HEAD", key, what)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise object_error(self.store, response, response.content, key, what)

    def put_file(
        self, key: str, path: str | os.PathLike[str], sha256_hex: str | None = None
    ) -> int:
        """Upload a file as object `key` (one PUT, payload signed with its sha256)."""
        size = os.path.getsize(path)
        if size > SINGLE_PUT_MAX:
            raise StorageError(
                f"{self.store.kind} backend: {path} has {size} bytes, more than one PUT "
                f"may upload ({SINGLE_PUT_MAX}); multipart upload is not supported"
            )
        if sha256_hex is None:
            sha256_hex = _file_sha256(path)
        what = f"PUT object {key}"
        with open(path, "rb") as f:

            def body(f: BinaryIO = f) -> Iterator[bytes]:
                f.seek(0)
                while piece := f.read(PIECE):
                    yield piece

            last = None
            for attempt in range(self.retries + 1):
                try:
                    req = self.store.request(
                        self.http,
                        "PUT",
                        key,
                        headers={
                            "Content-Length": str(size),
                            "Content-Type": "application/octet-stream",
                        },
                        content=body(),
                        payload_sha256=sha256_hex,
                    )
                    response = self.http.send(req)
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return size
                    if response.status_code != 429 and response.status_code < 500:
                        raise object_error(self.store, response, response.content, key, what)
                    last = describe_error(response, response.content)[1]
                if attempt < self.retries:
                    log.warning("%s: %s; retry %d/%d", what, last, attempt + 1, self.retries)
                    time.sleep(min(5.0, 0.5 * 2**attempt))
        raise StorageError(f"{self.store.kind} backend {self.store.describe()}: {what}: {last}")


def _file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            h.update(piece)
    return h.hexdigest()
