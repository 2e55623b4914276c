"""The registry client against a real distribution registry, with skopeo as the other client."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from nydus.errors import DigestMismatch
from nydus.oci import mediatypes as mt
from nydus.oci.errors import RegistryError, RegistryNotFound
from nydus.oci.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_manifest,
    select_manifest,
)
from nydus.oci.registry import RegistryClient

from .conftest import needs_skopeo
from .layout import Image, make_image, read_layout_blob, sha256, skopeo, write_layout

FILES = [
    {"etc/hostname": b"nydus\n", "bin/hello": b"#!/bin/sh\necho hello\n"},
    {"usr/share/data.bin": os.urandom(3000)},
]


@pytest.fixture(scope="module")
def image() -> Image:
    return make_image(FILES)


@pytest.fixture(scope="module")
def client(registry):
    with RegistryClient(registry.host, insecure=True, retries=1, backoff=0.01) as c:
        yield c


@pytest.fixture(scope="module")
def pushed_by_skopeo(registry, image, tmp_path_factory) -> str:
    """`src/oci:v1` (OCI) and `src/docker:v1` (Docker schema2) pushed by skopeo."""
    layout = tmp_path_factory.mktemp("layout")
    write_layout(layout, image, "v1")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout}:v1",
        f"docker://{registry.host}/src/oci:v1",
    )
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        f"oci:{layout}:v1",
        f"docker://{registry.host}/src/docker:v1",
    )
    return registry.host


@needs_skopeo
def test_pull_oci_image_pushed_by_skopeo(client, pushed_by_skopeo, image, tmp_path):
    fetched = client.get_manifest("src/oci", "v1")
    assert fetched.media_type == mt.OCI_MANIFEST
    assert fetched.data == image.manifest
    assert fetched.digest == image.manifest_digest

    manifest = Manifest.from_json(fetched.data)
    assert manifest.config.digest == image.config_digest
    assert [layer.digest for layer in manifest.layers] == image.layer_digests
    assert client.read_blob("src/oci", manifest.config.digest) == image.config
    for i, layer in enumerate(manifest.layers):
        dest = tmp_path / f"layer{i}"
        assert client.get_blob("src/oci", layer.digest, dest) == len(image.layers[i])
        assert dest.read_bytes() == image.layers[i]
        assert client.stat_blob("src/oci", layer.digest) == len(image.layers[i])

    head = client.head_manifest("src/oci", "v1")
    assert head == Descriptor(mt.OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    by_digest = client.get_manifest("src/oci", image.manifest_digest)
    assert by_digest.digest == image.manifest_digest


@needs_skopeo
def test_pull_docker_schema2_image_pushed_by_skopeo(client, pushed_by_skopeo, image):
    fetched = client.get_manifest("src/docker", "v1")
    assert fetched.media_type == mt.DOCKER_MANIFEST
    manifest = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(manifest, Manifest)
    assert manifest.media_type == mt.DOCKER_MANIFEST
    assert manifest.config.media_type == mt.DOCKER_CONFIG
    assert [layer.media_type for layer in manifest.layers] == [mt.DOCKER_LAYER_GZIP] * 2
    assert [layer.digest for layer in manifest.layers] == image.layer_digests
    config = json.loads(client.read_blob("src/docker", manifest.config.digest))
    assert config["rootfs"]["diff_ids"] == json.loads(image.config)["rootfs"]["diff_ids"]
    # Docker's own descriptor order is mediaType, size, digest; ours is the OCI (nydusify) order,
    # so the round trip keeps the content, not the bytes.
    assert json.loads(manifest.to_json()) == json.loads(fetched.data)
    assert manifest.to_json() != fetched.data


def _push_image(client: RegistryClient, repo: str, image: Image, tag: str) -> str:
    for blob in (image.config, *image.layers):
        assert client.push_blob(repo, sha256(blob), blob) == "uploaded"
    return client.put_manifest(repo, tag, image.manifest, mt.OCI_MANIFEST)


@needs_skopeo
def test_push_image_then_skopeo_inspects_and_copies_it(client, registry, tmp_path):
    image = make_image([{"a.txt": b"pushed by nydus\n"}, {"b/c.bin": os.urandom(5000)}], "arm64")
    digest = _push_image(client, "pushed/img", image, "v1")
    assert digest == image.manifest_digest

    info = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/pushed/img:v1")
    )
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == image.layer_digests
    assert (info["Os"], info["Architecture"]) == ("linux", "arm64")

    out = tmp_path / "copy"
    skopeo(
        "copy", "--src-tls-verify=false", f"docker://{registry.host}/pushed/img:v1", f"oci:{out}:v1"
    )
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest_digest
    assert read_layout_blob(out, image.config_digest) == image.config
    for layer, digest in zip(image.layers, image.layer_digests):
        assert read_layout_blob(out, digest) == layer


def test_push_blob_skips_existing_and_mounts_across_repos(client):
    blob = os.urandom(2048)
    digest = sha256(blob)
    assert client.blob_exists("mount/a", digest) is False
    assert client.push_blob("mount/a", digest, blob) == "uploaded"
    assert client.push_blob("mount/a", digest, blob) == "exists"
    assert client.push_blob("mount/b", digest, blob, from_repo="mount/a") == "mounted"
    assert client.read_blob("mount/b", digest) == blob
    # A mount from a repository without the blob falls back to an upload.
    other = os.urandom(100)
    assert client.push_blob("mount/c", sha256(other), other, from_repo="mount/a") == "uploaded"
    assert client.read_blob("mount/c", sha256(other)) == other


def test_chunked_upload_from_path_and_file(client, tmp_path):
    blob = os.urandom(300_000)
    digest = sha256(blob)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    assert client.push_blob("chunked/path", digest, path, chunk_size=64 * 1024) == "uploaded"
    assert client.stat_blob("chunked/path", digest) == len(blob)
    assert client.read_blob("chunked/path", digest) == blob

    file = io.BytesIO(blob)
    assert client.push_blob("chunked/file", digest, file, chunk_size=100_000) == "uploaded"
    out = io.BytesIO()
    assert client.get_blob("chunked/file", digest, out) == len(blob)
    assert out.getvalue() == blob
    assert client.push_blob("chunked/mono", digest, io.BytesIO(blob), chunk_size=0) == "uploaded"
    assert client.read_blob("chunked/mono", digest) == blob


def test_push_with_wrong_digest_is_refused(client):
    with pytest.raises(RegistryError) as info:
        client.push_blob("bad/digest", sha256(b"other"), b"actual content")
    assert info.value.status == 400
    assert "bad/digest blob sha256:" in str(info.value)
    assert "DIGEST_INVALID" in str(info.value)


def test_range_get_returns_exact_bytes(client):
    blob = os.urandom(200_000)
    digest = sha256(blob)
    client.push_blob("range/blob", digest, blob)
    for start, length in [
        (0, 1),
        (0, 4096),
        (1000, 5000),
        (199_990, 10),
        (0, 200_000),
        (65_536, 65_536),
    ]:
        assert (
            client.get_blob_range("range/blob", digest, start, length)
            == blob[start : start + length]
        )
    assert client.get_blob_range("range/blob", digest, 10, 0) == b""
    with pytest.raises(RegistryError) as info:
        client.get_blob_range("range/blob", digest, 300_000, 10)
    assert info.value.status == 416


def test_missing_manifest_and_blob_are_not_found(client, registry):
    with pytest.raises(RegistryNotFound) as info:
        client.get_manifest("nothing/here", "v9")
    assert str(info.value).startswith(f"{registry.host}/nothing/here manifest v9: not found")
    assert client.head_manifest("nothing/here", "v9") is None
    digest = sha256(b"absent")
    assert client.stat_blob("nothing/here", digest) is None
    with pytest.raises(RegistryNotFound, match=f"nothing/here blob {digest}"):
        client.read_blob("nothing/here", digest)


def test_put_manifest_by_digest_checks_it(client):
    data = b'{"schemaVersion":2}'
    with pytest.raises(DigestMismatch):
        client.put_manifest("x/y", sha256(b"else"), data, mt.OCI_MANIFEST)


def test_index_round_trip_and_platform_selection(client):
    amd = make_image([{"amd": b"1"}], "amd64")
    arm = make_image([{"arm": b"2"}], "arm64")
    _push_image(client, "multi/img", amd, "amd64")
    _push_image(client, "multi/img", arm, "arm64")
    index = Index(
        manifests=[
            Descriptor(
                mt.OCI_MANIFEST,
                amd.manifest_digest,
                len(amd.manifest),
                platform=Platform("linux", "amd64"),
            ),
            Descriptor(
                mt.OCI_MANIFEST,
                arm.manifest_digest,
                len(arm.manifest),
                platform=Platform("linux", "arm64", "v8"),
            ),
        ]
    )
    index_digest = client.put_manifest("multi/img", "latest", index.to_json(2), mt.OCI_INDEX)

    fetched = client.get_manifest("multi/img", "latest")
    assert (fetched.media_type, fetched.digest) == (mt.OCI_INDEX, index_digest)
    parsed = parse_manifest(fetched.data)
    assert isinstance(parsed, Index)
    chosen = select_manifest(parsed, "linux/arm64")
    assert chosen.digest == arm.manifest_digest
    assert client.get_manifest("multi/img", chosen.digest).data == arm.manifest


def test_skip_verify_falls_back_to_plain_http(registry):
    with RegistryClient(registry.host, skip_verify=True, retries=0) as c:
        assert c.head_manifest("nothing/here", "v1") is None
        assert c.scheme == "http"


def test_get_blob_to_path_leaves_no_partial_file(client, tmp_path: Path):
    dest = tmp_path / "out"
    with pytest.raises(RegistryNotFound):
        client.get_blob("nothing/here", sha256(b"x"), dest)
    assert list(tmp_path.iterdir()) == []
