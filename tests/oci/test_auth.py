"""Docker config credential lookup, WWW-Authenticate parsing and redaction."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from nydus.oci.auth import (
    Challenge,
    Credentials,
    docker_config_path,
    load_credentials,
    merge_scopes,
    parse_www_authenticate,
    redact,
    redact_url,
    repo_scope,
)
from nydus.oci.errors import AuthError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
                    "localhost:5000": {"auth": b64("local:pa:ss")},
                    "http://registry.example.com:8443/some/path": {
                        "username": "u2",
                        "password": "p2",
                    },
                    "ghcr.io": {"identitytoken": "refresh-me"},
                    "empty.example.com": {},
                }
            }
        )
    )
    return path


def test_config_path_from_env(docker_config, tmp_path, monkeypatch):
    assert docker_config_path() == tmp_path / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert docker_config_path() == tmp_path / "home" / ".docker" / "config.json"


@pytest.mark.parametrize(
    "host, username, password",
    [
        ("docker.io", "hubuser", "hubpass"),
        ("registry-1.docker.io", "hubuser", "hubpass"),
        ("index.docker.io", "hubuser", "hubpass"),
        ("localhost:5000", "local", "pa:ss"),  # only the first ':' separates
        ("registry.example.com:8443", "u2", "p2"),
        ("REGISTRY.example.com:8443", "u2", "p2"),
    ],
)
def test_lookup_by_host(docker_config, host, username, password):
    creds = load_credentials(host)
    assert creds == Credentials(username, password)


def test_lookup_misses_and_identity_token(docker_config):
    assert load_credentials("localhost:5001") is None
    assert load_credentials("registry.example.com") is None  # port is part of the key
    assert load_credentials("empty.example.com") is None
    assert load_credentials("ghcr.io") == Credentials(identity_token="refresh-me")


def test_explicit_path_and_missing_file(tmp_path):
    assert load_credentials("docker.io", tmp_path / "absent.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert load_credentials("docker.io", bad) is None


def test_bad_auth_field_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"x.io": {"auth": b64("no-colon")}}}))
    with pytest.raises(AuthError, match=r"auths\['x.io'\]: decoded value has no ':'"):
        load_credentials("x.io", path)
    path.write_text(json.dumps({"auths": {"x.io": {"auth": "%%%"}}}))
    with pytest.raises(AuthError, match="not valid base64"):
        load_credentials("x.io", path)


def test_credential_helper(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'case "$server" in\n'
        '  helped.io) echo \'{"ServerURL":"helped.io","Username":"hu","Secret":"hs"}\' ;;\n'
        '  https://index.docker.io/v1/) echo \'{"Username":"<token>","Secret":"idt"}\' ;;\n'
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "credHelpers": {"helped.io": "fake"},
                "auths": {"plain.io": {"auth": b64("a:b")}},
                "credsStore": "fake",
            }
        )
    )
    assert load_credentials("helped.io", path) == Credentials("hu", "hs")
    assert load_credentials("plain.io", path) == Credentials("a", "b")
    assert load_credentials("docker.io", path) == Credentials(identity_token="idt")
    assert load_credentials("other.io", path) is None


def test_credentials_never_show_secrets():
    creds = Credentials("alice", "hunter2", identity_token="idtok", registry_token="regtok")
    text = repr(creds)
    assert text == "Credentials(username='alice')"
    assert creds.basic() == "Basic " + b64("alice:hunter2")
    assert Credentials.from_auth(b64("u:p:q")) == Credentials("u", "p:q")


def test_parse_www_authenticate():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push"'
    )
    assert parse_www_authenticate(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/ubuntu:pull,push",
            },
        )
    ]
    assert parse_www_authenticate('Basic realm="Registry Realm"') == [
        Challenge("basic", {"realm": "Registry Realm"})
    ]
    assert parse_www_authenticate('Basic realm=x, BEARER realm="a\\"b" , service=s') == [
        Challenge("basic", {"realm": "x"}),
        Challenge("bearer", {"realm": 'a"b', "service": "s"}),
    ]
    assert parse_www_authenticate("") == []
    assert repo_scope("a/b") == "repository:a/b:pull"
    assert repo_scope("a/b", push=True) == "repository:a/b:pull,push"
    assert (
        merge_scopes("repository:a:pull,push", "repository:a:pull repository:b:pull")
        == "repository:a:pull,push repository:b:pull"
    )
    assert merge_scopes("registry:catalog:*", "") == "registry:catalog:*"


def test_redact():
    text = (
        "Authorization: Bearer abc.def.ghi\n"
        'form password=hunter2&user=bob {"token": "tok1", "access_token":"tok2"} '
        "header Basic dXNlcjpwYXNz end"
    )
    out = redact(text)
    for secret in ("abc.def.ghi", "hunter2", "tok1", "tok2", "dXNlcjpwYXNz"):
        assert secret not in out
    assert out == (
        "Authorization: ***\n"
        'form password=***&user=bob {"token": "***", "access_token":"***"} '
        "header Basic *** end"
    )
    assert (
        redact_url("https://u:p@s3.example.com/bucket/blob?X-Amz-Signature=abc")
        == "https://s3.example.com/bucket/blob?…"
    )
    assert (
        redact_url("http://127.0.0.1:5000/v2/x/blobs/sha256:1")
        == "http://127.0.0.1:5000/v2/x/blobs/sha256:1"
    )
