"""Multi-arch sources (an OCI index with linux/amd64 and linux/arm64/v8 entries, built here):
`--platform`, `--all-platforms`, `--merge-platform`, and `nydusify check` on each result."""

from __future__ import annotations

import json

import pytest

from tests.converter.conftest import (
    CHECK_FILESYSTEM,
    LOG_LINE,
    convert,
    get_blob,
    get_manifest,
    http,
    nydusify,
)
from tests.converter.images import Layout, arch_layers, make_image, push, sha256
from tests.helpers.env import marked

NYDUS_ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"
NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def multi(registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("multi")
    layout = Layout(base / "layout")
    images = {arch: make_image(arch_layers(arch), arch=arch) for arch in ("amd64", "arm64")}
    layout.add_index("multi", [images["amd64"], images["arm64"]])
    push(layout, "multi", f"{registry.host}/multi:v1", all_images=True)
    with http(registry) as c:
        index, ctype, _ = get_manifest(c, "multi", "v1")
    assert ctype == OCI_INDEX and len(index["manifests"]) == 2
    return {"base": base, "source": f"{registry.host}/multi:v1", "images": images, "index": index}


def _convert(multi, tag: str, *extra: str):
    work = multi["base"] / f"work-{tag}" / "tmp"
    work.parent.mkdir()
    return convert(multi["source"], f"{multi['source'].split('/')[0]}/multi:{tag}", work, *extra)


def _check(target: str, tmp_path, *extra: str, source: str | None = None):
    args = ["check", "--target", target, "--target-insecure", "--work-dir", str(tmp_path / "out")]
    if source:
        args += ["--source", source, "--source-insecure"]
    return nydusify(*args, *extra, cwd=tmp_path)


def _layers_are_nydus(man: dict) -> None:
    assert all(
        x["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1"
        for x in man["layers"][:-1]
    )
    assert man["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"


@marked(*CHECK_FILESYSTEM)
def test_one_platform_gives_a_single_manifest(multi, registry, tmp_path):
    run = _convert(multi, "arm64-nydus", "--platform", "linux/arm64").ok()
    assert any(
        LOG_LINE.sub("", ln) == f"Pulling image {multi['source']} with platform linux/arm64"
        for ln in run.lines
    ), run.lines
    with http(registry) as c:
        man, ctype, _ = get_manifest(c, "multi", "arm64-nydus")
        config = json.loads(get_blob(c, "multi", man["config"]["digest"]))
    assert ctype == OCI_MANIFEST and "manifests" not in man
    _layers_are_nydus(man)
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    assert (
        man["annotations"]["containerd.io/snapshot/nydus-source-digest"]
        == multi["images"]["arm64"].manifest_digest
    )
    # the filesystem check compares with the arm64 entry of the source index
    run = _check(
        f"{registry.host}/multi:arm64-nydus",
        tmp_path,
        "--platform",
        "linux/arm64",
        source=multi["source"],
    ).ok()
    assert any("Verified filesystem" in ln for ln in run.lines)
    # against the amd64 entry the same image differs, and check says where
    run = _check(
        f"{registry.host}/multi:arm64-nydus",
        tmp_path,
        "--platform",
        "linux/amd64",
        source=multi["source"],
    )
    assert run.returncode == 1
    [err] = [ln for ln in run.lines if ln.startswith("ERRO")]
    assert "differs from" in err and "/bin/tool-amd64: only in the source" in err
    assert "/bin/tool-arm64: only in the target" in err and "/etc/arch: content sha256" in err


@marked(*CHECK_FILESYSTEM)
def test_all_platforms_give_an_index_of_nydus_manifests(multi, registry, tmp_path):
    _convert(multi, "all-nydus", "--all-platforms").ok()
    with http(registry) as c:
        index, ctype, _ = get_manifest(c, "multi", "all-nydus")
        assert ctype == OCI_INDEX
        plats = [
            (m["platform"]["architecture"], m["platform"].get("variant"))
            for m in index["manifests"]
        ]
        assert sorted(plats) == [("amd64", None), ("arm64", "v8")]
        for entry in index["manifests"]:
            assert "artifactType" not in entry
            man, _, raw = get_manifest(c, "multi", entry["digest"])
            assert sha256(raw) == entry["digest"]
            _layers_are_nydus(man)
            config = json.loads(get_blob(c, "multi", man["config"]["digest"]))
            assert config["architecture"] == entry["platform"]["architecture"]
    for plat in ("linux/amd64", "linux/arm64"):
        _check(
            f"{registry.host}/multi:all-nydus", tmp_path, "--platform", plat, source=multi["source"]
        ).ok()
    # not the merged index --multi-platform asks for
    run = _check(f"{registry.host}/multi:all-nydus", tmp_path, "--multi-platform")
    assert run.returncode == 1
    assert "has no Nydus manifest (artifactType" in run.lines[-1]


@marked(*CHECK_FILESYSTEM)
def test_merge_platform_gives_the_merged_index(multi, registry, tmp_path):
    _convert(multi, "merged", "--merge-platform", "--all-platforms").ok()
    with http(registry) as c:
        index, ctype, raw = get_manifest(c, "multi", "merged")
        assert ctype == OCI_INDEX
        entries = index["manifests"]
        assert len(entries) == 4
        source_digests = {m["digest"] for m in multi["index"]["manifests"]}
        oci, nydus = entries[:2], entries[2:]
        assert all("artifactType" not in e for e in oci)
        for e in oci:  # the source manifest as is (<= v2.3.6) or with the empty layer (>= v2.3.7)
            if e["digest"] not in source_digests:
                man, _, _ = get_manifest(c, "multi", e["digest"])
                assert man["layers"][0]["annotations"] == {
                    "containerd.io/snapshot/nydus-empty-layer": "true"
                }
                assert (
                    e["annotations"]["containerd.io/snapshot/nydus-source-digest"] in source_digests
                )
        assert sorted(e["platform"]["architecture"] for e in oci) == ["amd64", "arm64"]
        assert all(e["artifactType"] == NYDUS_ARTIFACT for e in nydus)
        assert sorted(e["platform"]["architecture"] for e in nydus) == ["amd64", "arm64"]
        for e in nydus:
            man, _, _ = get_manifest(c, "multi", e["digest"])
            _layers_are_nydus(man)
            assert man["config"]["mediaType"] == NYDUS_CONFIG
    run = _check(
        f"{registry.host}/multi:merged",
        tmp_path,
        "--multi-platform",
        "--platform",
        "linux/arm64",
        source=multi["source"],
    ).ok()
    assert any("Verified filesystem" in ln for ln in run.lines)
    # a single manifest is not a merged index
    _convert(multi, "amd64-only", "--platform", "linux/amd64").ok()
    run = _check(f"{registry.host}/multi:amd64-only", tmp_path, "--multi-platform")
    assert run.returncode == 1 and "is a single manifest, not the merged index" in run.lines[-1]


def test_missing_platform_is_one_clear_error(multi, registry, tmp_path):
    run = _convert(multi, "s390x", "--platform", "linux/s390x")
    assert run.returncode == 1
    errors = [ln for ln in run.lines if ln.startswith("ERRO")]
    assert len(errors) == 1 and "no manifest for platform linux/s390x" in errors[0]
    _convert(multi, "all-for-s390x", "--all-platforms").ok()  # its own: tests run in any order
    run = _check(f"{registry.host}/multi:all-for-s390x", tmp_path, "--platform", "linux/s390x")
    assert run.returncode == 1 and "no manifest for platform linux/s390x" in run.lines[-1]
