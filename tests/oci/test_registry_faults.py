"""Transient failures, dropped connections, corrupt content and redirects, on a fake server."""

from __future__ import annotations

import os

import pytest

from nydus.errors import DigestMismatch
from nydus.oci import mediatypes as mt
from nydus.oci.auth import Credentials
from nydus.oci.errors import AuthError, RegistryError
from nydus.oci.registry import RegistryClient

from .fake_registry import FakeServer, State
from .layout import sha256

BLOB = os.urandom(100_000)


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.stop()


def client_for(server: FakeServer, retries: int = 3, **kwargs) -> RegistryClient:
    return RegistryClient(server.host, insecure=True, retries=retries, backoff=0.001, **kwargs)


def test_429_and_5xx_are_retried_until_success(fake):
    digest = fake.add_blob(BLOB)
    fake.fail("GET", f"/v2/r/blobs/{digest}", 429, 503, 502)
    with client_for(fake, retries=3) as client:
        assert client.read_blob("r", digest) == BLOB
    assert len(fake.seen("GET")) == 4


def test_retries_are_bounded(fake):
    fake.add_blob(BLOB)  # present, and never asked for
    fake.fail("GET", "/v2/r/manifests/", *[503] * 10)
    with client_for(fake, retries=2) as client, pytest.raises(RegistryError) as info:
        client.get_manifest("r", "v1")
    assert (info.value.status, info.value.retryable) == (503, True)
    assert str(info.value) == f"{fake.host}/r manifest v1: HTTP 503 UNAVAILABLE: x"
    gets = fake.seen("GET")
    assert len(gets) == 3
    assert all("/manifests/" in s.path for s in gets)
    assert not [s.path for s in fake.seen() if "/blobs/" in s.path]


def test_connection_reset_is_retried(fake):
    fake.state.manifests["v1"] = (b'{"schemaVersion":2}', mt.OCI_MANIFEST)
    fake.fail("GET", "/v2/r/manifests/v1", "reset", "reset")
    with client_for(fake) as client:
        fetched = client.get_manifest("r", "v1")
    assert (fetched.data, fetched.media_type) == (b'{"schemaVersion":2}', mt.OCI_MANIFEST)
    assert len(fake.seen("GET")) == 3


def test_connection_resets_beyond_the_limit_fail_once(fake):
    fake.fail("HEAD", "/v2/r/blobs/", *["reset"] * 5)
    with client_for(fake, retries=1) as client:
        with pytest.raises(RegistryError, match=f"{fake.host}/r blob sha256:.*: HEAD failed"):
            client.blob_exists("r", sha256(b"x"))
    assert len(fake.seen("HEAD")) == 2


def test_download_resumes_after_dropped_connection(fake, tmp_path):
    digest = fake.add_blob(BLOB)
    fake.fail("GET", f"/v2/r/blobs/{digest}", "truncate")
    with client_for(fake) as client:
        assert client.get_blob("r", digest, tmp_path / "blob") == len(BLOB)
    assert (tmp_path / "blob").read_bytes() == BLOB
    ranges = [s.range for s in fake.seen("GET")]
    assert ranges == [None, f"bytes={len(BLOB) // 2}-"]


def test_digest_mismatch_leaves_no_file(fake, tmp_path):
    digest = fake.add_blob(b"tampered content", digest=sha256(b"original content"))
    dest = tmp_path / "blob"
    with client_for(fake) as client, pytest.raises(DigestMismatch) as info:
        client.get_blob("r", digest, dest)
    assert str(info.value) == (
        f"{fake.host}/r blob {digest}: downloaded 16 bytes with digest "
        f"{sha256(b'tampered content')}"
    )
    assert list(tmp_path.iterdir()) == []


def test_manifest_by_digest_is_verified(fake):
    wanted = sha256(b'{"schemaVersion":2,"a":1}')
    fake.state.manifests[wanted] = (b'{"schemaVersion":2,"a":2}', mt.OCI_MANIFEST)
    with client_for(fake) as client:
        with pytest.raises(DigestMismatch, match=f"r manifest {wanted}: content has digest"):
            client.get_manifest("r", wanted)


def test_range_redirect_is_cached_and_resolved_again(fake):
    storage = FakeServer(fake.state)
    fake.redirect_to = storage
    digest = fake.add_blob(BLOB)
    creds = Credentials(registry_token="static-token")
    try:
        with client_for(fake, credentials=creds) as client:
            assert client.get_blob_range("r", digest, 10, 100) == BLOB[10:110]
            assert client.get_blob_range("r", digest, 5000, 7) == BLOB[5000:5007]
            fake.expire()  # pre-signed URL no longer valid: 403 from storage
            assert client.get_blob_range("r", digest, 0, 3) == BLOB[0:3]
            assert client.read_blob("r", digest) == BLOB  # full GET follows the redirect too
    finally:
        storage.stop()
    hits = [(s.path.split("/")[1], s.range, s.authorization) for s in fake.seen()]
    registry_hits = [(r, a) for where, r, a in hits if where == "v2"]
    storage_hits = [(r, a) for where, r, a in hits if where == "storage"]
    assert registry_hits == [
        ("bytes=10-109", "Bearer static-token"),
        ("bytes=0-2", "Bearer static-token"),
        (None, "Bearer static-token"),
    ]
    # Storage never sees the registry's credentials.
    assert storage_hits == [
        ("bytes=10-109", None),
        ("bytes=5000-5006", None),
        ("bytes=0-2", None),
        ("bytes=0-2", None),
        (None, None),
    ]


def test_refused_redirect_target_is_an_auth_error(fake):
    storage = FakeServer(State())  # knows no signatures of ours: always 403
    storage.state.signature = -1
    fake.redirect_to = storage
    digest = fake.add_blob(BLOB)
    try:
        with client_for(fake) as client:
            with pytest.raises(AuthError, match=f"{fake.host}/r blob {digest} range 0\\+4"):
                client.get_blob_range("r", digest, 0, 4)
    finally:
        storage.stop()


def test_redirect_target_host_can_be_forced(fake):
    storage = FakeServer(fake.state)
    fake.redirect_to, fake.redirect_host = storage, "blobs.invalid"
    digest = fake.add_blob(BLOB)
    try:
        with client_for(fake, retries=0) as client:
            with pytest.raises(RegistryError, match="GET failed: ConnectError"):
                client.get_blob_range("r", digest, 0, 4)
        with client_for(fake, blob_redirected_host="127.0.0.1") as client:
            assert client.get_blob_range("r", digest, 0, 4) == BLOB[:4]
    finally:
        storage.stop()
    assert [s.path.split("/")[1] for s in fake.seen()] == ["v2", "v2", "storage"]


def test_upload_starts_again_after_server_error(fake):
    blob = os.urandom(5000)
    fake.fail("PUT", "/v2/r/blobs/uploads/", 500)
    with client_for(fake) as client:
        assert client.push_blob("r", sha256(blob), blob) == "uploaded"
    assert fake.state.blobs[sha256(blob)] == blob
    assert [s.method for s in fake.seen()] == ["HEAD", "POST", "PUT", "POST", "PUT"]


def test_chunked_upload_patch_failure_starts_again(fake):
    blob = os.urandom(10_000)
    fake.fail("PATCH", "/v2/r/blobs/uploads/", "reset")
    with client_for(fake) as client:
        assert client.push_blob("r", sha256(blob), blob, chunk_size=4096) == "uploaded"
    assert fake.state.blobs[sha256(blob)] == blob
    assert [s.method for s in fake.seen()] == [
        "HEAD",
        "POST",
        "PATCH",
        "POST",
        "PATCH",
        "PATCH",
        "PATCH",
        "PUT",
    ]


def test_server_ignoring_range_is_sliced(fake):
    digest = fake.add_blob(BLOB)
    fake.ignore_range = True
    with client_for(fake) as client:
        assert client.get_blob_range("r", digest, len(BLOB) - 5, 5) == BLOB[-5:]
        with pytest.raises(RegistryError, match="range 99999\\+10: short read, got 1 bytes"):
            client.get_blob_range("r", digest, 99_999, 10)
    assert [s.range for s in fake.seen()] == ["bytes=99995-99999", "bytes=99999-100008"]
