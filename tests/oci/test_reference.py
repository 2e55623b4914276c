"""Image reference parsing and normalisation (docker/distribution grammar)."""

from __future__ import annotations

import pytest

from nydus.oci.errors import InvalidReference
from nydus.oci.reference import Reference, api_host, check_digest, sha256_digest

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, host, repo, tag, digest, normalized",
    [
        (
            "ubuntu",
            "docker.io",
            "library/ubuntu",
            "latest",
            None,
            "docker.io/library/ubuntu:latest",
        ),
        (
            "ubuntu:16.04",
            "docker.io",
            "library/ubuntu",
            "16.04",
            None,
            "docker.io/library/ubuntu:16.04",
        ),
        ("nginx", "docker.io", "library/nginx", "latest", None, "docker.io/library/nginx:latest"),
        (
            "docker.io/nginx",
            "docker.io",
            "library/nginx",
            "latest",
            None,
            "docker.io/library/nginx:latest",
        ),
        ("index.docker.io/foo/bar:1", "docker.io", "foo/bar", "1", None, "docker.io/foo/bar:1"),
        ("foo/bar", "docker.io", "foo/bar", "latest", None, "docker.io/foo/bar:latest"),
        (
            "localhost:5000/ubuntu:16.04",
            "localhost:5000",
            "ubuntu",
            "16.04",
            None,
            "localhost:5000/ubuntu:16.04",
        ),
        ("localhost/ubuntu", "localhost", "ubuntu", "latest", None, "localhost/ubuntu:latest"),
        (
            "127.0.0.1:5000/a/b/c",
            "127.0.0.1:5000",
            "a/b/c",
            "latest",
            None,
            "127.0.0.1:5000/a/b/c:latest",
        ),
        (f"ghcr.io/org/img@{D}", "ghcr.io", "org/img", None, D, f"ghcr.io/org/img@{D}"),
        (f"ghcr.io/org/img:v1@{D}", "ghcr.io", "org/img", "v1", D, f"ghcr.io/org/img:v1@{D}"),
        ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y"),
        (
            "my-reg.example.com/a_b/c__d/e-f.g:T_1.x-y",
            "my-reg.example.com",
            "a_b/c__d/e-f.g",
            "T_1.x-y",
            None,
            "my-reg.example.com/a_b/c__d/e-f.g:T_1.x-y",
        ),
    ],
)
def test_parse(text, host, repo, tag, digest, normalized):
    ref = Reference.parse(text)
    assert (ref.host, ref.repo, ref.tag, ref.digest) == (host, repo, tag, digest)
    assert ref.normalized() == normalized == str(ref)
    assert Reference.parse(normalized) == ref


def test_properties():
    ref = Reference.parse("ubuntu:16.04")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.name == "docker.io/library/ubuntu"
    assert ref.ref == "16.04"
    assert Reference.parse(f"x.io/y@{D}").ref == D
    assert Reference.parse("localhost:5000/u").api_host == "localhost:5000"
    assert ref.with_tag("18.04").normalized() == "docker.io/library/ubuntu:18.04"
    assert ref.with_digest(D).normalized() == f"docker.io/library/ubuntu:16.04@{D}"
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("quay.io") == "quay.io"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        (" ubuntu", "padded"),
        ("Ubuntu", "must be lowercase"),
        ("localhost:5000/Ubuntu", "must be lowercase"),
        ("a//b", "must be lowercase"),
        ("ubuntu:", "bad tag ''"),
        ("ubuntu:-x", "bad tag '-x'"),
        ("ubuntu@sha256:abc", "sha256 needs 64 lowercase hex digits"),
        ("ubuntu@sha256:" + "AB" * 32, "sha256 needs 64 lowercase hex digits"),
        ("ubuntu@nodigest", "expected algorithm:hex"),
        ("bad_host:5000/x", "bad registry host"),
        ("a/" + "b" * 260, "longer than 255"),
    ],
)
def test_bad_references_give_one_line_errors(text, reason):
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message
    assert message.startswith(f"invalid image reference {text!r}")


def test_digest_helpers():
    assert (
        sha256_digest(b"")
        == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert check_digest(D) == D
    with pytest.raises(InvalidReference, match="invalid layer digest 'sha256:12'"):
        check_digest("sha256:12", "layer digest")
