"""A client of the OCI distribution API over one thread-safe `httpx.Client`.

Used by nydusify (pull OCI images, push Nydus images) and by nydusd's registry backend (Range
GETs of blob chunks). Transient failures (429, 5xx, timeouts, dropped connections) are retried
a bounded number of times with exponential backoff; an authentication failure is one AuthError
after at most one fresh try, never a retry storm.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Self, Union

import httpx

from nydus import __version__
from nydus.errors import DigestMismatch
from nydus.oci import mediatypes as mt
from nydus.oci.auth import (
    Authenticator,
    Credentials,
    load_credentials,
    merge_scopes,
    redact_url,
    registry_reason,
    repo_scope,
)
from nydus.oci.errors import AuthError, RegistryError, RegistryNotFound
from nydus.oci.manifest import Descriptor
from nydus.oci.reference import Reference, api_host, check_digest, sha256_digest
from nydus.utils.ranges import take_range

__all__ = ["BlobSource", "FetchedManifest", "PushResult", "RegistryClient", "parse_retry_after"]

log = logging.getLogger(__name__)

MANIFEST_MAX = 4 << 20  # refuse manifests larger than this (OCI suggests 4 MiB)
READ_PIECE = 1 << 20
DEFAULT_CHUNK_SIZE = 64 << 20  # blobs larger than this are uploaded with chunked PATCHes
_REDIRECTS = (301, 302, 303, 307, 308)
_TLS_HINTS = ("ssl", "wrong version number", "tls", "certificate")

BlobSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]
PushResult = Literal["exists", "mounted", "uploaded"]
Body = bytes | Callable[[], Iterable[bytes]] | None


class FetchedManifest(NamedTuple):
    data: bytes
    media_type: str
    digest: str


@dataclass(slots=True)
class _Redirect:
    url: str
    expires: float  # time.monotonic()


class RegistryClient:
    """One registry host; thread safe; close() (or `with`) releases its connections."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        skip_verify: bool = False,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        redirect_ttl: float = 300.0,
        blob_url_scheme: str = "",
        blob_redirected_host: str = "",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`insecure`: plain HTTP. `skip_verify`: no TLS verification, and a switch to plain
        HTTP when the server does not speak TLS (nydusd's behaviour). `retries`: extra attempts
        after a transient failure. `blob_url_scheme` / `blob_redirected_host`: forced on the
        redirect targets of range reads (nydusd's registry options of the same names).
        `transport`: a test seam (httpx transport)."""
        self.host = api_host(host)
        self.scheme = "http" if insecure else "https"
        self.skip_verify = skip_verify
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.chunk_size = chunk_size
        self.redirect_ttl = redirect_ttl
        self.blob_url_scheme = blob_url_scheme
        self.blob_redirected_host = blob_redirected_host
        self._http = httpx.Client(
            verify=not skip_verify,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": f"nydus-py/{__version__}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._auth = Authenticator(self.host, credentials, self._send_plain)
        self._lock = threading.Lock()
        self._redirects: OrderedDict[tuple[str, str], _Redirect] = OrderedDict()

    @classmethod
    def for_reference(
        cls, ref: Reference | str, *, docker_config: bool = True, **kwargs: Any
    ) -> RegistryClient:
        """A client for `ref`'s registry with credentials from the Docker config."""
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        if docker_config and "credentials" not in kwargs:
            kwargs["credentials"] = load_credentials(ref.host)
        return cls(ref.host, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # -- manifests -------------------------------------------------------------------------

    def get_manifest(
        self, repo: str, ref: str, accept: Sequence[str] = mt.MANIFEST_ACCEPT
    ) -> FetchedManifest:
        """Manifest or index bytes, media type and digest; a digest `ref` is verified."""
        what = self._what(repo, "manifest", ref)
        response = self._send(
            "GET", f"/v2/{repo}/manifests/{ref}", repo, what, headers={"Accept": ", ".join(accept)}
        )
        data = response.content
        if len(data) > MANIFEST_MAX:
            raise RegistryError(
                f"{what}: manifest of {len(data)} bytes is larger than {MANIFEST_MAX}"
            )
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and digest != ref:
            raise DigestMismatch(f"{what}: content has digest {digest}")
        return FetchedManifest(data, _media_type(response, data), digest)

    def head_manifest(
        self, repo: str, ref: str, accept: Sequence[str] = mt.MANIFEST_ACCEPT
    ) -> Descriptor | None:
        """Descriptor (media type, digest, size) of a manifest, None if it does not exist."""
        what = self._what(repo, "manifest", ref)
        response = self._send(
            "HEAD",
            f"/v2/{repo}/manifests/{ref}",
            repo,
            what,
            headers={"Accept": ", ".join(accept)},
            ok=(200, 404),
        )
        if response.status_code == 404:
            return None
        digest = response.headers.get("docker-content-digest")
        size = response.headers.get("content-length")
        if not digest or size is None or not size.isdigit():
            fetched = self.get_manifest(repo, ref, accept)
            return Descriptor(fetched.media_type, fetched.digest, len(fetched.data))
        return Descriptor(_media_type(response, b""), check_digest(digest), int(size))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """Push a manifest or index under a tag (or its digest); return its digest."""
        digest = sha256_digest(data)
        what = self._what(repo, "manifest", ref)
        if ref.startswith("sha256:") and ref != digest:
            raise DigestMismatch(f"{what}: content has digest {digest}")
        response = self._send(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            repo,
            what,
            push=True,
            headers={"Content-Type": media_type},
            body=bytes(data),
            ok=(201,),
        )
        _check_echoed_digest(response, digest, what)
        log.debug("pushed %s (%s, %d bytes)", what, digest, len(data))
        return digest

    # -- blobs -----------------------------------------------------------------------------

    def stat_blob(self, repo: str, digest: str) -> int | None:
        """Size of a blob, or None if the repository does not have it."""
        what = self._what(repo, "blob", check_digest(digest))
        response = self._send(
            "HEAD", f"/v2/{repo}/blobs/{digest}", repo, what, ok=(200, 404), follow_redirects=True
        )
        if response.status_code == 404:
            return None
        size = response.headers.get("content-length", "")
        return int(size) if size.isdigit() else -1

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self.stat_blob(repo, digest) is not None

    def iter_blob(self, repo: str, digest: str) -> Iterator[bytes]:
        """Stream a blob; resumes with Range after a dropped connection; the digest is checked
        when the stream ends (DigestMismatch then, after all pieces were yielded)."""
        what = self._what(repo, "blob", check_digest(digest))
        algorithm = digest.split(":", 1)[0]
        if algorithm not in ("sha256", "sha384", "sha512"):
            raise RegistryError(f"{what}: unsupported digest algorithm {algorithm!r}")
        hasher = hashlib.new(algorithm)
        received = failures = 0
        while True:
            headers = {"Accept-Encoding": "identity"}
            if received:
                headers["Range"] = f"bytes={received}-"
            response = self._send(
                "GET",
                f"/v2/{repo}/blobs/{digest}",
                repo,
                what,
                headers=headers,
                ok=(200, 206),
                stream=True,
                follow_redirects=True,
            )
            skip = received if response.status_code == 200 else 0
            try:
                for data in response.iter_bytes():
                    if skip:
                        data, skip = data[skip:], max(0, skip - len(data))
                    if data:
                        hasher.update(data)
                        received += len(data)
                        yield data
                break
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.retries:
                    raise RegistryError(
                        f"{what}: download failed after {received} bytes: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                log.warning(
                    "%s: connection lost after %d bytes (%s), resuming",
                    what,
                    received,
                    type(exc).__name__,
                )
                self._sleep(failures - 1, None)
            finally:
                response.close()
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"{what}: downloaded {received} bytes with digest {actual}")

    def read_blob(self, repo: str, digest: str) -> bytes:
        """A whole (small) blob such as an image config, digest-checked."""
        return b"".join(self.iter_blob(repo, digest))

    def get_blob(self, repo: str, digest: str, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """Download a blob into a file object or a path (written to a temporary name, renamed
        into place only when the digest matches); return its size."""
        if not isinstance(dest, (str, os.PathLike)):
            size = 0
            for data in self.iter_blob(repo, digest):
                dest.write(data)
                size += len(data)
            return size
        path = Path(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "wb") as out:
                size = self.get_blob(repo, digest, out)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return size

    def get_blob_range(self, repo: str, digest: str, start: int, length: int) -> bytes:
        """Exactly `length` bytes of a blob from `start` (a Range GET, as nydusd's backend).

        Redirects to blob storage are followed and the target cached per blob; a cached target
        that expired or answers 401/403 is resolved again through the registry. A server that
        ignores Range is streamed past the bytes before the range (never buffered whole).
        """
        what = f"{self._what(repo, 'blob', check_digest(digest))} range {start}+{length}"
        if start < 0 or length < 0:
            raise RegistryError(f"{what}: invalid range start={start} length={length}")
        if length == 0:
            return b""
        response = self.open_blob_range(
            repo, digest, start, length, attempts=None, accept=(200, 206)
        )
        try:
            return _range_body(response, start, length, what)
        finally:
            response.close()

    def open_blob_range(
        self,
        repo: str,
        digest: str,
        start: int,
        length: int,
        *,
        attempts: int | None = 1,
        accept: Sequence[int] | None = None,
    ) -> httpx.Response:
        """The streamed reply (after auth and redirects) to a Range GET of `length` bytes of
        a blob from `start`; the caller reads and closes it. `accept`: the statuses returned
        (None: any; others raise RegistryError, transient ones after retries). `attempts`
        (1 by default: the caller owns retries) bounds tries of transient failures."""
        what = self._what(repo, "blob", check_digest(digest))
        headers = {"Range": f"bytes={start}-{start + length - 1}", "Accept-Encoding": "identity"}
        span = f"{what} range {start}+{length}"
        every: Sequence[int] = range(100, 600) if accept is None else tuple(accept)
        cached = self._cached_redirect(repo, digest)
        if cached is not None:
            response = self._send(
                "GET",
                cached,
                repo,
                span,
                headers=headers,
                anonymous=True,
                ok=(*every, 401, 403),
                stream=True,
                follow_redirects=True,
                attempts=attempts,
            )
            if response.status_code not in (401, 403):
                return response
            _drain(response)
            log.debug(
                "%s: cached redirect refused (%d), resolving again", what, response.status_code
            )
            self._forget_redirect(repo, digest)
        response = self._send(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            repo,
            span,
            headers=headers,
            ok=[*(s for s in every if s != 401), *_REDIRECTS],
            stream=True,
            attempts=attempts,
        )
        if response.status_code not in _REDIRECTS:
            return response
        target = self._redirect_target(response)
        _drain(response)
        self._remember_redirect(repo, digest, target)
        log.debug("%s redirected to %s", what, redact_url(target))
        return self._send(
            "GET",
            target,
            repo,
            span,
            headers=headers,
            anonymous=True,
            ok=every,
            stream=True,
            follow_redirects=True,
            attempts=attempts,
        )

    def push_blob(
        self,
        repo: str,
        digest: str,
        source: BlobSource,
        size: int | None = None,
        *,
        from_repo: str | None = None,
        chunk_size: int | None = None,
    ) -> PushResult:
        """Upload a blob unless the repository has it; try a cross-repository mount from
        `from_repo` first. Blobs larger than `chunk_size` go up in PATCH chunks."""
        what = self._what(repo, "blob", check_digest(digest))
        scopes = repo_scope(repo, push=True)
        if from_repo and from_repo != repo:
            scopes = merge_scopes(scopes, repo_scope(from_repo))
        if (
            self._send(
                "HEAD",
                f"/v2/{repo}/blobs/{digest}",
                repo,
                what,
                ok=(200, 404),
                scope=scopes,
                follow_redirects=True,
            ).status_code
            == 200
        ):
            log.debug("%s already exists, skipping upload", what)
            return "exists"
        with _Source.open(source, size) as src:
            chunk = chunk_size if chunk_size is not None else self.chunk_size
            for attempt in range(self.retries + 1):
                try:
                    return self._upload(repo, digest, src, chunk, from_repo, scopes, what)
                except RegistryError as exc:
                    if not exc.retryable or attempt == self.retries:
                        raise
                    log.warning("%s: upload failed (%s), starting it again", what, exc)
                    self._sleep(attempt, None)
        raise AssertionError("unreachable")

    def _upload(
        self,
        repo: str,
        digest: str,
        src: _Source,
        chunk: int,
        from_repo: str | None,
        scopes: str,
        what: str,
    ) -> PushResult:
        params = {"mount": digest, "from": from_repo} if from_repo and from_repo != repo else {}
        response = self._send(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            repo,
            what,
            params=params,
            scope=scopes,
            ok=(201, 202),
            body=b"",
        )
        if response.status_code == 201:
            log.debug("%s mounted from %s", what, from_repo)
            return "mounted"
        location = _location(response, what)
        offset = 0
        if chunk > 0 and src.size > chunk:
            while offset < src.size:
                n = min(chunk, src.size - offset)
                response = self._send(
                    "PATCH",
                    location,
                    repo,
                    what,
                    scope=scopes,
                    ok=(202,),
                    attempts=1,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + n - 1}",
                        "Content-Length": str(n),
                    },
                    body=src.reader(offset, n),
                )
                location = _location(response, what)
                offset += n
        url = str(httpx.URL(location).copy_merge_params({"digest": digest}))
        response = self._send(
            "PUT",
            url,
            repo,
            what,
            scope=scopes,
            ok=(201,),
            attempts=1,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(src.size - offset),
            },
            body=src.reader(offset, src.size - offset),
        )
        _check_echoed_digest(response, digest, what)
        log.debug("uploaded %s (%d bytes)", what, src.size)
        return "uploaded"

    # -- redirect cache --------------------------------------------------------------------

    def _cached_redirect(self, repo: str, digest: str) -> str | None:
        with self._lock:
            entry = self._redirects.get((repo, digest))
            if entry is None:
                return None
            if time.monotonic() >= entry.expires:
                del self._redirects[(repo, digest)]
                return None
            return entry.url

    def _remember_redirect(self, repo: str, digest: str, url: str) -> None:
        with self._lock:
            self._redirects[(repo, digest)] = _Redirect(url, time.monotonic() + self.redirect_ttl)
            self._redirects.move_to_end((repo, digest))
            while len(self._redirects) > 4096:
                self._redirects.popitem(last=False)

    def _redirect_target(self, response: httpx.Response) -> str:
        url = response.url.join(response.headers.get("location", ""))
        if self.blob_url_scheme:
            url = url.copy_with(scheme=self.blob_url_scheme)
        if self.blob_redirected_host:
            url = url.copy_with(host=self.blob_redirected_host)
        return str(url)

    def _forget_redirect(self, repo: str, digest: str) -> None:
        with self._lock:
            self._redirects.pop((repo, digest), None)

    # -- requests --------------------------------------------------------------------------

    def _what(self, repo: str, kind: str, name: str) -> str:
        return f"{self.host}/{repo} {kind} {name}"

    def _send(
        self,
        method: str,
        url: str,
        repo: str,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: Body = None,
        ok: Sequence[int] = (200,),
        push: bool = False,
        scope: str | None = None,
        anonymous: bool = False,
        stream: bool = False,
        follow_redirects: bool = False,
        attempts: int | None = None,
    ) -> httpx.Response:
        """One API request with auth, bounded retries of transient failures and error mapping.

        `url` is a path below the base URL or an absolute URL (upload locations, redirects).
        `anonymous` sends no Authorization (blob storage behind a redirect). `attempts` limits
        tries (1 for requests whose body cannot be replayed safely).
        """
        scope = scope or repo_scope(repo, push)
        auth = None if anonymous else self._auth.header(scope)
        fresh_auth = False
        attempt = 0
        limit = self.retries + 1 if attempts is None else attempts
        while True:
            request = self._http.build_request(
                method,
                url if "://" in url else self.base_url + url,
                params=params,
                headers={**(headers or {}), **({"Authorization": auth} if auth else {})},
                content=body() if callable(body) else body,
            )
            try:
                response = self._read(request, ok, stream, follow_redirects)
            except httpx.TransportError as exc:
                if self._fall_back_to_http(exc, url):
                    continue
                attempt += 1
                transient = not isinstance(exc, httpx.UnsupportedProtocol)
                if attempt >= limit or not transient:
                    raise RegistryError(
                        f"{what}: {method} failed: {type(exc).__name__}: {exc}", retryable=transient
                    ) from exc
                log.warning(
                    "%s: %s %s failed (%s), retry %d/%d",
                    what,
                    method,
                    redact_url(request.url),
                    type(exc).__name__,
                    attempt,
                    limit - 1,
                )
                self._sleep(attempt - 1, None)
                continue
            status = response.status_code
            log.debug("%s %s -> %d", method, redact_url(request.url), status)
            if status == 401 and not anonymous and 401 not in ok:
                _drain(response)
                target = f"{self.host}/{repo}"
                if fresh_auth:
                    raise self._auth.refused(response, auth, target)
                auth = self._auth.on_unauthorized(response, scope, auth, target)
                fresh_auth = True
                continue
            if status in ok:
                return response
            _drain(response)
            if (status == 429 or status >= 500) and attempt + 1 < limit:
                attempt += 1
                log.warning(
                    "%s: %s %s -> %s, retry %d/%d",
                    what,
                    method,
                    redact_url(request.url),
                    registry_reason(response),
                    attempt,
                    limit - 1,
                )
                self._sleep(attempt - 1, response.headers.get("retry-after"))
                continue
            raise _status_error(response, what, self.host, repo)

    def _read(
        self, request: httpx.Request, ok: Sequence[int], stream: bool, follow_redirects: bool
    ) -> httpx.Response:
        """Send; read the body of a wanted, non-streamed reply. Error replies stay unread, so a
        broken error body (distribution's 416 announces the blob's length) is no transport
        failure."""
        response = self._http.send(request, stream=True, follow_redirects=follow_redirects)
        if response.status_code in ok and not stream:
            try:
                response.read()
            finally:
                response.close()
        return response

    def _send_plain(self, request: httpx.Request) -> httpx.Response:
        """Send a token-server request with the same transient-failure retries."""
        what = f"token server {request.url.host}"
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        return self._send(
            request.method,
            str(request.url),
            "",
            what,
            anonymous=True,
            headers=headers,
            body=request.content,
            ok=range(200, 500),
        )

    def _fall_back_to_http(self, exc: httpx.TransportError, url: str) -> bool:
        if not (
            self.skip_verify
            and self.scheme == "https"
            and "://" not in url
            and isinstance(exc, httpx.ConnectError)
        ):
            return False
        text = str(exc).lower()
        if not any(hint in text for hint in _TLS_HINTS):
            return False
        log.warning("%s does not speak TLS (%s), switching to plain HTTP", self.host, exc)
        self.scheme = "http"
        return True

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        delay *= 0.5 + random.random() / 2
        if retry_after:
            delay = min(self.max_backoff, max(delay, parse_retry_after(retry_after)))
        time.sleep(delay)


class _Source:
    """A replayable blob body: bytes, a path or a seekable binary file."""

    def __init__(
        self, data: memoryview | None, file: BinaryIO | None, size: int, owned: bool
    ) -> None:
        self._data, self._file, self.size, self._owned = data, file, size, owned
        self._lock = threading.Lock()

    @classmethod
    def open(cls, source: BlobSource, size: int | None) -> _Source:
        if isinstance(source, (bytes, bytearray, memoryview)):
            view = memoryview(source).cast("B")
            return cls(view, None, len(view) if size is None else size, False)
        if isinstance(source, (str, os.PathLike)):
            file = open(source, "rb")  # noqa: SIM115 - closed by __exit__
            return cls(None, file, os.fstat(file.fileno()).st_size if size is None else size, True)
        if size is None:
            size = source.seek(0, io.SEEK_END)
        return cls(None, source, size, False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned and self._file is not None:
            self._file.close()

    def reader(self, offset: int, length: int) -> Callable[[], Iterable[bytes]]:
        def pieces() -> Iterator[bytes]:
            done = 0
            while done < length:
                n = min(READ_PIECE, length - done)
                if self._data is not None:
                    data = bytes(self._data[offset + done : offset + done + n])
                else:
                    with self._lock:
                        self._file.seek(offset + done)  # type: ignore[union-attr]
                        data = self._file.read(n)  # type: ignore[union-attr]
                if not data:
                    raise RegistryError(
                        f"blob source ended at {offset + done} of {offset + length} bytes"
                    )
                done += len(data)
                yield data

        return pieces


def _drain(response: httpx.Response) -> None:
    try:
        response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()


def _media_type(response: httpx.Response, data: bytes) -> str:
    value: str = response.headers.get("content-type", "").split(";", 1)[0].strip()
    if value and value not in ("application/json", "text/plain", "application/octet-stream"):
        return value
    try:
        found: object = json.loads(data).get("mediaType") if data else None
    except (ValueError, AttributeError):
        found = None
    return found if isinstance(found, str) and found else value


def _location(response: httpx.Response, what: str) -> str:
    location = response.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: upload reply {response.status_code} without Location")
    return str(response.url.join(location))


def _check_echoed_digest(response: httpx.Response, digest: str, what: str) -> None:
    echoed = response.headers.get("docker-content-digest")
    if echoed and echoed != digest:
        raise DigestMismatch(f"{what}: registry stored it as {echoed}")


def _range_body(response: httpx.Response, start: int, length: int, what: str) -> bytes:
    skip = 0
    if response.status_code == 200:
        log.debug("%s: server ignored Range, streaming past the bytes before it", what)
        skip = start
    else:
        served = response.headers.get("content-range", "")
        if served and not served.startswith(f"bytes {start}-"):
            raise RegistryError(f"{what}: server returned range {served!r}")
    data = take_range(response.iter_bytes(), skip, length)
    if len(data) < length:
        raise RegistryError(f"{what}: short read, got {len(data)} bytes")
    return data


def _status_error(response: httpx.Response, what: str, host: str, repo: str) -> RegistryError:
    status = response.status_code
    reason = registry_reason(response)
    if status in (401, 403):
        return AuthError(
            f"authentication failed for {host}/{repo}: {what}: {reason}", status=status
        )
    if status == 404:
        return RegistryNotFound(f"{what}: not found ({reason})", status=status)
    return RegistryError(
        f"{what}: {reason}", status=status, retryable=status == 429 or status >= 500
    )


def parse_retry_after(value: str) -> float:
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0
