"""Basic (htpasswd) and Bearer token auth against real registries."""

from __future__ import annotations

import base64
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from nydus.oci import mediatypes as mt
from nydus.oci.auth import Credentials, repo_scope
from nydus.oci.errors import AuthError
from nydus.oci.registry import RegistryClient

from .conftest import USERS, needs_skopeo
from .layout import make_image, sha256, skopeo

PASSWORD = USERS["alice"]
WRONG = "not-the-Pa55word"


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that records (method, path) of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


def client_for(registry, creds: Credentials | None, transport=None) -> RegistryClient:
    return RegistryClient(
        registry.host,
        insecure=True,
        credentials=creds,
        retries=3,
        backoff=0.01,
        transport=transport,
    )


def secrets_in(text: str, *secrets: str) -> list[str]:
    encoded = [base64.b64encode(f"alice:{s}".encode()).decode() for s in secrets]
    return [s for s in (*secrets, *encoded) if s in text]


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_basic_auth_right_credentials(basic_registry, debug_logs):
    blob = os.urandom(1000)
    transport = CountingTransport()
    with client_for(basic_registry, Credentials("alice", PASSWORD), transport) as client:
        assert client.push_blob("basic/img", sha256(blob), blob) == "uploaded"
        assert client.read_blob("basic/img", sha256(blob)) == blob
        assert client.get_blob_range("basic/img", sha256(blob), 10, 20) == blob[10:30]
    # One 401 to learn the challenge, then Basic is sent up front.
    assert transport.sent == [
        ("HEAD", f"/v2/basic/img/blobs/{sha256(blob)}"),
        ("HEAD", f"/v2/basic/img/blobs/{sha256(blob)}"),
        ("POST", "/v2/basic/img/blobs/uploads/"),
        ("PUT", transport.sent[3][1]),
        ("GET", f"/v2/basic/img/blobs/{sha256(blob)}"),
        ("GET", f"/v2/basic/img/blobs/{sha256(blob)}"),
    ]
    assert secrets_in(debug_logs.text, PASSWORD) == []


def test_basic_auth_wrong_credentials_fail_fast(basic_registry, debug_logs):
    transport = CountingTransport()
    with client_for(basic_registry, Credentials("alice", WRONG), transport) as client:
        with pytest.raises(AuthError) as info:
            client.get_manifest("basic/img", "v1")
        assert len(transport.sent) == 2  # anonymous probe, then the refused credentials
        message = str(info.value)
        assert message.startswith(f"authentication failed for {basic_registry.host}/basic/img: ")
        assert "credentials of user 'alice' refused" in message
        assert "\n" not in message
        with pytest.raises(AuthError):
            client.blob_exists("basic/img", sha256(b"x"))
        assert len(transport.sent) == 3  # the challenge is known now: one request, no retries
    assert secrets_in(debug_logs.text + message, WRONG) == []


def test_basic_auth_without_credentials(basic_registry):
    with client_for(basic_registry, None) as client:
        with pytest.raises(AuthError, match="registry requires credentials and none are"):
            client.head_manifest("basic/img", "v1")


def test_token_auth_push_pull_reuses_tokens(token_registry, token_server, debug_logs):
    image = make_image([{"t.txt": b"token auth\n"}])
    token_server.requests.clear()
    creds = Credentials("alice", PASSWORD)
    with client_for(token_registry, creds) as client:
        for blob in (image.config, *image.layers):
            assert client.push_blob("tok/img", sha256(blob), blob) == "uploaded"
        digest = client.put_manifest("tok/img", "v1", image.manifest, mt.OCI_MANIFEST)
        assert digest == image.manifest_digest
        assert client.get_manifest("tok/img", "v1").data == image.manifest
        assert client.read_blob("tok/img", image.config_digest) == image.config
    # One POST (OAuth2 password grant) per scope; later requests reuse the cached token.
    assert [(r["method"], r["grant_type"], r["scope"]) for r in token_server.requests] == [
        ("POST", "password", repo_scope("tok/img", push=True)),
        ("POST", "password", repo_scope("tok/img")),
    ]
    assert secrets_in(debug_logs.text, PASSWORD) == []
    assert not any("Bearer ey" in r.getMessage() for r in debug_logs.records)


def test_token_refreshed_on_expiry_and_on_401(token_registry, token_server):
    blob = os.urandom(500)
    creds = Credentials("alice", PASSWORD)
    with client_for(token_registry, creds) as client:
        client.push_blob("tok/refresh", sha256(blob), blob)
        token_server.requests.clear()
        assert client.read_blob("tok/refresh", sha256(blob)) == blob
        assert len(token_server.requests) == 1
        scope = repo_scope("tok/refresh")
        auth = client._auth
        token, _ = auth._tokens[scope]
        auth._tokens[scope] = (token, 0.0)  # expired: fetched again before the next request
        assert client.blob_exists("tok/refresh", sha256(blob))
        assert len(token_server.requests) == 2
        auth._tokens[scope] = ("revoked-token", float("inf"))  # refused: one fresh try on 401
        assert client.blob_exists("tok/refresh", sha256(blob))
        assert len(token_server.requests) == 3
        assert auth._tokens[scope][0] not in ("revoked-token", token)


def test_token_auth_wrong_password_and_anonymous(token_registry, token_server, debug_logs):
    transport = CountingTransport()
    token_server.requests.clear()
    with client_for(token_registry, Credentials("alice", WRONG), transport) as client:
        with pytest.raises(AuthError) as info:
            client.get_manifest("tok/img", "v1")
    message = str(info.value)
    assert message.startswith(
        f"authentication failed for {token_registry.host}/tok/img: "
        "token server refused user 'alice'"
    )
    # registry probe + token POST + token GET (fallback for servers without OAuth2), no more
    assert len(transport.sent) == 3
    assert [r["method"] for r in token_server.requests] == ["POST", "GET"]
    assert secrets_in(debug_logs.text + message, WRONG) == []

    with client_for(token_registry, None) as client:
        with pytest.raises(AuthError, match="token server refused anonymous"):
            client.get_manifest("tok/img", "v1")


def test_token_server_without_post_falls_back_to_get(token_registry, token_server):
    token_server.requests.clear()
    token_server.post_supported = False
    try:
        with client_for(token_registry, Credentials("alice", PASSWORD)) as client:
            assert client.head_manifest("tok/none", "v1") is None
            assert client.head_manifest("tok/none2", "v1") is None
    finally:
        token_server.post_supported = True
    assert [(r["method"], r["user"]) for r in token_server.requests] == [
        ("POST", ""),
        ("GET", "alice"),
        ("GET", "alice"),
    ]  # POST is not tried again


def test_token_the_registry_rejects_gives_one_auth_error(token_registry, token_server):
    transport = CountingTransport()
    token_server.bad_signature = True
    try:
        with client_for(token_registry, Credentials("alice", PASSWORD), transport) as client:
            with pytest.raises(AuthError) as info:
                client.get_manifest("tok/img", "v1")
    finally:
        token_server.bad_signature = False
    assert str(info.value).startswith(f"authentication failed for {token_registry.host}/tok/img")
    assert len(transport.sent) == 3  # probe, token, one retry with the fresh token


def test_static_registry_token_is_sent_as_bearer(token_registry, token_server):
    with client_for(token_registry, Credentials("alice", PASSWORD)) as client:
        client.head_manifest("tok/static", "v1")
        token = client._auth._tokens[repo_scope("tok/static")][0]
    token_server.requests.clear()
    with client_for(token_registry, Credentials(registry_token=token)) as client:
        assert client.head_manifest("tok/static", "v1") is None
    assert token_server.requests == []
    with client_for(token_registry, Credentials(registry_token="bogus")) as client:
        with pytest.raises(AuthError, match="registry token refused"):
            client.head_manifest("tok/static", "v1")


@needs_skopeo
def test_skopeo_reads_image_pushed_with_token_auth(token_registry):
    image = make_image([{"s.txt": b"skopeo with creds\n"}])
    with client_for(token_registry, Credentials("alice", PASSWORD)) as client:
        for blob in (image.config, *image.layers):
            client.push_blob("tok/skopeo", sha256(blob), blob)
        client.put_manifest("tok/skopeo", "v1", image.manifest, mt.OCI_MANIFEST)
    info = json.loads(
        skopeo(
            "inspect",
            "--tls-verify=false",
            "--creds",
            f"alice:{PASSWORD}",
            f"docker://{token_registry.host}/tok/skopeo:v1",
        )
    )
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == image.layer_digests


def test_for_reference_takes_credentials_from_docker_config(basic_registry, tmp_path, monkeypatch):
    auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {f"http://{basic_registry.host}": {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    ref = f"{basic_registry.host}/basic/ref:v1"
    with RegistryClient.for_reference(ref, insecure=True) as client:
        assert client.head_manifest("basic/ref", "v1") is None
    with RegistryClient.for_reference(ref, insecure=True, docker_config=False) as client:
        with pytest.raises(AuthError, match="registry requires credentials"):
            client.head_manifest("basic/ref", "v1")


def test_concurrent_range_reads_share_one_client(token_registry, token_server):
    blob = os.urandom(64 * 1024)
    digest = sha256(blob)
    with client_for(token_registry, Credentials("alice", PASSWORD)) as client:
        client.push_blob("tok/threads", digest, blob)
        token_server.requests.clear()
        spans = [(i * 997 % 60_000, 1 + i * 131 % 4096) for i in range(64)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda s: client.get_blob_range("tok/threads", digest, *s), spans))
    assert got == [blob[start : start + n] for start, n in spans]
    assert len(token_server.requests) == 1  # threads wait for the one fetch of their scope
