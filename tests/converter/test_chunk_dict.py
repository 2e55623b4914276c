"""Chunk dictionaries through nydusify: `nydusify chunkdict generate` from two converted
versions of an image, pushed as a Nydus image, then `nydusify convert --chunk-dict
bootstrap:registry:REF` of a third version: its blob holds only what the dictionary lacks,
its manifest carries the dictionary blobs it uses, and `nydusify check` mounts it from the
registry with our nydusd and finds every file equal to the source."""

from __future__ import annotations

import random

import pytest

from nydus.format.rafs import open_bootstrap, walk
from tests.converter.conftest import convert, get_manifest, http, nydusify
from tests.converter.images import Layout, make_image, push
from tests.helpers.layers import F

CS = 0x10000


def _version(v: int) -> list[list]:
    r = random.Random(11)
    common = [F(f"usr/lib/c{i}.so", r.randbytes(r.randint(200, 3 * CS))) for i in range(20)]
    own = random.Random(v)
    return [
        [
            *common,
            *(F(f"app/v{v}-{i}.bin", own.randbytes(own.randint(100, 2 * CS))) for i in range(5)),
            F("etc/version", f"{v}\n".encode()),
        ]
    ]


@pytest.fixture(scope="module")
def versions(registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("chunkdict-convert")
    layout = Layout(base / "layout")
    for v in (1, 2, 3):
        layout.add_image(f"v{v}", make_image(_version(v)))
        push(layout, f"v{v}", f"{registry.host}/app:v{v}")
    work = base / "w" / "tmp"
    work.parent.mkdir()
    for v in (1, 2, 3):
        convert(
            f"{registry.host}/app:v{v}",
            f"{registry.host}/app:v{v}-nydus",
            work,
            "--fs-chunk-size",
            hex(CS),
        ).ok()
    return {"base": base, "work": work}


def _blob_layers(registry, tag: str) -> list[dict]:
    with http(registry) as c:
        return get_manifest(c, "app", tag)[0]["layers"][:-1]


def test_dictionary_image_shrinks_the_third_version(versions, registry, tmp_path):
    host = registry.host
    nydusify(
        "chunkdict",
        "generate",
        "--sources",
        f"{host}/app:v1-nydus,{host}/app:v2-nydus",
        "--target",
        f"{host}/dict:latest",
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "gen"),
        cwd=tmp_path,
    ).ok()
    with http(registry) as c:
        dict_manifest = get_manifest(c, "dict", "latest")[0]
    dict_blob_digests = {x["digest"] for x in dict_manifest["layers"][:-1]}
    v1 = _blob_layers(registry, "v1-nydus")
    assert dict_blob_digests == {v1[0]["digest"]}  # shared chunks come from v1's blob
    work = tmp_path / "w" / "tmp"
    work.parent.mkdir()
    convert(
        f"{host}/app:v3",
        f"{host}/app:v3-dict",
        work,
        "--fs-chunk-size",
        hex(CS),
        "--chunk-dict",
        f"bootstrap:registry:{host}/dict:latest",
        "--chunk-dict-insecure",
    ).ok()
    plain = _blob_layers(registry, "v3-nydus")
    with_dict = _blob_layers(registry, "v3-dict")
    # the manifest lists the image's own blob, then the dictionary blob it references
    assert [x["digest"] for x in with_dict[1:]] == [v1[0]["digest"]]
    boot = open_bootstrap((work / host / "app:v3-dict" / "bootstrap").read_bytes())
    assert {b.blob_id for b in boot.blobs} == {with_dict[0]["digest"][7:], v1[0]["digest"][7:]}
    dict_index = next(b.blob_index for b in boot.blobs if "sha256:" + b.blob_id == v1[0]["digest"])
    shared: dict[tuple[int, int], int] = {}
    for _path, ino in walk(boot):
        if boot.attr(ino).is_reg:
            for ref in boot.chunks(ino):
                if ref.blob_index == dict_index:
                    shared[(ref.blob_index, ref.ci_index)] = ref.compressed_size or 0
    shared_bytes = sum(shared.values())
    assert len(shared) > 20 and shared_bytes > 20 * CS
    saved = plain[0]["size"] - with_dict[0]["size"]
    assert shared_bytes <= saved <= shared_bytes + 64 * len(shared) + 8192
    # a valid Nydus image whose files equal the source's, read back from the registry
    nydusify(
        "check",
        "--target",
        f"{host}/app:v3-dict",
        "--source",
        f"{host}/app:v3",
        "--target-insecure",
        "--source-insecure",
        "--work-dir",
        str(tmp_path / "check"),
        cwd=tmp_path,
    ).ok()


def test_missing_chunk_dict_image_fails_clearly(versions, registry, tmp_path):
    work = tmp_path / "w" / "tmp"
    work.parent.mkdir()
    r = convert(
        f"{registry.host}/app:v3",
        f"{registry.host}/app:never",
        work,
        "--chunk-dict",
        f"bootstrap:registry:{registry.host}/nothing:here",
        "--chunk-dict-insecure",
    )
    assert r.returncode != 0 and "nothing" in r.stderr
    with http(registry) as c:
        assert c.get("/v2/app/manifests/never").status_code == 404
