"""Manifest, index, descriptor and platform models: parsing, Go-order JSON, Nydus detection."""

from __future__ import annotations

import json

import pytest

from nydus.errors import FormatError
from nydus.oci import mediatypes as mt
from nydus.oci.errors import InvalidManifest, PlatformNotFound
from nydus.oci.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    go_json,
    is_nydus_index_entry,
    is_nydus_manifest,
    parse_manifest,
    select_manifest,
)

D1, D2, D3, D4 = ("sha256:" + c * 64 for c in "1234")

# A Nydus manifest as nydusify writes it (fields deliberately out of Go order here).
NYDUS_MANIFEST = {
    "layers": [
        {
            "size": 100,
            "digest": D2,
            "mediaType": mt.NYDUS_BLOB,
            "annotations": {mt.NYDUS_BLOB_ANNOTATION: "true"},
        },
        {
            "annotations": {
                mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
                mt.NYDUS_FS_VERSION_ANNOTATION: "6",
            },
            "mediaType": mt.OCI_LAYER_GZIP,
            "digest": D3,
            "size": 200,
        },
    ],
    "annotations": {mt.NYDUS_SOURCE_REFERENCE_ANNOTATION: "docker.io/library/nginx:latest"},
    "config": {"digest": D1, "mediaType": mt.OCI_CONFIG, "size": 50},
    "subject": {"mediaType": mt.OCI_MANIFEST, "digest": D4, "size": 10},
    "mediaType": mt.OCI_MANIFEST,
    "schemaVersion": 2,
    "x-unknown": {"kept": [1, 2]},
}

GO_ORDER = (
    '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":50}},'
    f'"layers":[{{"mediaType":"application/vnd.oci.image.layer.nydus.blob.v1","digest":"{D2}",'
    '"size":100,"annotations":{"containerd.io/snapshot/nydus-blob":"true"}},'
    f'{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D3}","size":200,'
    '"annotations":{"containerd.io/snapshot/nydus-bootstrap":"true",'
    '"containerd.io/snapshot/nydus-fs-version":"6"}}],'
    f'"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D4}",'
    '"size":10},'
    '"annotations":{"containerd.io/snapshot/nydus-source-reference":'
    '"docker.io/library/nginx:latest"},"x-unknown":{"kept":[1,2]}}'
)


def test_manifest_round_trip_in_go_field_order():
    manifest = Manifest.from_json(json.dumps(NYDUS_MANIFEST).encode())
    assert manifest.config == Descriptor(mt.OCI_CONFIG, D1, 50)
    assert manifest.layers[0].annotations == {mt.NYDUS_BLOB_ANNOTATION: "true"}
    assert manifest.subject == Descriptor(mt.OCI_MANIFEST, D4, 10)
    assert manifest.extra == {"x-unknown": {"kept": [1, 2]}}
    assert manifest.to_json().decode() == GO_ORDER
    indented = manifest.to_json(indent=2).decode()
    assert indented.startswith('{\n  "schemaVersion": 2,\n  "mediaType": ')
    assert Manifest.from_json(indented) == manifest


def test_descriptor_go_order_and_omitempty():
    desc = Descriptor(
        mt.OCI_MANIFEST,
        D1,
        7,
        urls=["https://x/y"],
        annotations={"a": "b"},
        data="e30=",
        platform=Platform("linux", "arm64", "v8"),
        artifact_type=mt.NYDUS_MANIFEST_ARTIFACT,
    )
    assert list(desc.to_json()) == [
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "data",
        "platform",
        "artifactType",
    ]
    assert desc.to_json()["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert Descriptor(mt.OCI_MANIFEST, D1, 0).to_json() == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": D1,
        "size": 0,
    }
    assert Descriptor.from_json(desc.to_json()) == desc


def test_go_json_escapes_html_characters():
    assert go_json({"k": "<a&b>\u2028é"}) == '{"k":"\\u003ca\\u0026b\\u003e\\u2028é"}'.encode()
    assert go_json({"a": [], "b": {}}, indent=2) == b'{\n  "a": [],\n  "b": {}\n}'


def test_index_without_media_type_and_selection():
    raw = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D1,
                "size": 1,
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D2,
                "size": 2,
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D3,
                "size": 3,
                "artifactType": mt.NYDUS_MANIFEST_ARTIFACT,
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D4,
                "size": 4,
                "platform": {
                    "architecture": "arm64",
                    "os": "linux",
                    "os.features": [mt.NYDUS_OS_FEATURE],
                },
            },
        ],
    }
    index = parse_manifest(json.dumps(raw))
    assert isinstance(index, Index)
    assert index.media_type is None
    assert json.loads(index.to_json()) == raw  # no mediaType added
    assert select_manifest(index, "linux/amd64").digest == D1
    assert select_manifest(index, "linux/amd64", nydus=True).digest == D3
    assert select_manifest(index, "linux/arm64", nydus=False).digest == D2
    assert select_manifest(index, "linux/aarch64", nydus=True).digest == D4
    assert select_manifest(index, Platform.parse("linux/arm64/v8")).digest == D2
    assert [is_nydus_index_entry(e) for e in index.manifests] == [False, False, True, True]
    with pytest.raises(PlatformNotFound) as info:
        select_manifest(index, "linux/s390x")
    assert str(info.value) == (
        "no manifest for platform linux/s390x in index "
        "(platforms: linux/amd64, linux/arm64, linux/arm64/v8)"
    )


@pytest.mark.parametrize(
    "want, have, matches",
    [
        ("linux/amd64", Platform("linux", "amd64"), True),
        ("linux/amd64", Platform("linux", "x86_64"), True),
        ("linux/arm64", Platform("linux", "arm64", "v8"), True),
        ("linux/arm64/v8", Platform("linux", "arm64"), True),
        ("linux/arm64/v8", Platform("linux", "aarch64", "8"), True),
        ("linux/arm/v7", Platform("linux", "arm"), True),
        ("linux/arm/v6", Platform("linux", "arm", "v7"), False),
        ("linux/arm64", Platform("linux", "amd64"), False),
        ("linux/amd64", Platform("windows", "amd64"), False),
    ],
)
def test_platform_matching(want, have, matches):
    assert Platform.parse(want).matches(have) is matches


def test_platform_parse_errors_and_str():
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    with pytest.raises(Exception, match="invalid platform 'linux'"):
        Platform.parse("linux")


def test_nydus_manifest_detection():
    manifest = Manifest.from_json(NYDUS_MANIFEST)
    assert is_nydus_manifest(manifest) and is_nydus_manifest(manifest, strict=True)
    manifest.layers[-1].annotations[mt.NYDUS_BOOTSTRAP_ANNOTATION] = "yes"
    assert is_nydus_manifest(manifest) and not is_nydus_manifest(manifest, strict=True)
    manifest.layers[-1].media_type = mt.DOCKER_LAYER_GZIP
    manifest.layers[-1].annotations[mt.NYDUS_BOOTSTRAP_ANNOTATION] = "true"
    assert is_nydus_manifest(manifest, strict=True)
    manifest.layers.reverse()  # bootstrap must be the last layer
    assert not is_nydus_manifest(manifest)
    assert not is_nydus_manifest(Manifest(Descriptor(mt.OCI_CONFIG, D1, 1), []))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not json", "manifest is not valid JSON"),
        (b"[1]", "manifest is not a JSON object"),
        (b'{"schemaVersion": 1, "layers": []}', "schemaVersion 1, expected 2"),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:1", "size": 1}, '
            b'"layers": []}',
            "invalid manifest config digest 'sha256:1'",
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1}, "layers": []}',
            "manifest config: missing 'digest'",
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "'
            + D1.encode()
            + b'", "size": true}, "layers": []}',
            "manifest config: 'size' has the wrong type (bool)",
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "' + mt.OCI_INDEX.encode() + b'", "layers": []}',
            "manifest: unexpected mediaType",
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "'
            + D1.encode()
            + b'", "size": 1}, "layers": [{"mediaType": "y", "digest": "'
            + D2.encode()
            + b'", "size": -5}]}',
            "manifest layer 0: negative size -5",
        ),
    ],
)
def test_invalid_manifests(data, message):
    with pytest.raises(InvalidManifest) as info:
        Manifest.from_json(data)
    assert message in str(info.value)
    assert isinstance(info.value, FormatError)


def test_parse_manifest_chooses_by_media_type():
    docker = dict(NYDUS_MANIFEST, mediaType=mt.DOCKER_MANIFEST)
    parsed = parse_manifest(json.dumps(docker), mt.DOCKER_MANIFEST)
    assert isinstance(parsed, Manifest) and parsed.media_type == mt.DOCKER_MANIFEST
    docker_list = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST, "manifests": []}
    assert isinstance(parse_manifest(json.dumps(docker_list), "application/json"), Index)
