"""`nydusify check` says no, clearly, to images that break a rule: not a Nydus image, bad
layer media types or annotations, config diff ids that do not match, a blob table naming a
blob the manifest lacks, blob data corrupted in the registry's storage."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest

from nydus.kernel import is_mounted
from tests.converter.conftest import (
    CHECK_FILESYSTEM,
    convert,
    get_blob,
    get_manifest,
    http,
    nydusify,
)
from tests.converter.images import Layout, arch_layers, make_image, push, sha256
from tests.helpers.env import marked
from tests.helpers.layers import F

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def image(registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("check")
    layout = Layout(base / "layout")
    layout.add_image("v1", make_image(arch_layers("amd64")))
    push(layout, "v1", f"{registry.host}/chk:v1")
    work = base / "w" / "tmp"
    work.parent.mkdir()
    convert(f"{registry.host}/chk:v1", f"{registry.host}/chk:nydus", work).ok()
    with http(registry) as c:
        man, _, _ = get_manifest(c, "chk", "nydus")
        config = json.loads(get_blob(c, "chk", man["config"]["digest"]))
    return {"source": f"{registry.host}/chk:v1", "manifest": man, "config": config}


def _push_variant(registry, tag: str, manifest: dict, config: dict | None = None) -> str:
    with http(registry) as c:
        if config is not None:
            raw = json.dumps(config).encode()
            digest = sha256(raw)
            r = c.post("/v2/chk/blobs/uploads/")
            assert r.status_code == 202
            loc = r.headers["location"]
            r = c.put(
                f"{loc}{'&' if '?' in loc else '?'}digest={digest}",
                content=raw,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 201, r.text
            manifest["config"] = {**manifest["config"], "digest": digest, "size": len(raw)}
        r = c.put(
            f"/v2/chk/manifests/{tag}",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
    return f"{registry.host}/chk:{tag}"


def _check(target: str, tmp_path, *extra: str) -> tuple[int, str]:
    run = nydusify(
        "check",
        "--target",
        target,
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "out"),
        *extra,
        cwd=tmp_path,
    )
    errors = [ln for ln in run.lines if ln.startswith("ERRO")]
    assert "Traceback" not in run.stderr
    if run.returncode == 0:
        return 0, ""
    assert len(errors) == 1, run.stderr
    return run.returncode, errors[0]


def test_valid_image_passes_without_source(image, registry, tmp_path):
    assert _check(f"{registry.host}/chk:nydus", tmp_path) == (0, "")


def test_an_oci_image_is_not_a_nydus_image(image, tmp_path):
    rc, err = _check(image["source"], tmp_path)
    assert rc == 1 and f"{image['source']} (sha256:" in err
    assert "is not a Nydus image: no layer has a containerd.io/snapshot/nydus-bootstrap" in err


@pytest.mark.parametrize(
    "case, message",
    [
        ("blob-annotation", "layer 0 (sha256:"),
        (
            "blob-media-type",
            "has media type 'application/vnd.oci.image.layer.v1.tar+gzip', want "
            "application/vnd.oci.image.layer.nydus.blob.v1",
        ),
        ("bootstrap-value", "annotation containerd.io/snapshot/nydus-bootstrap is 'yes', want"),
        ("bootstrap-media-type", "has media type 'application/vnd.oci.image.layer.v1.tar.gz'"),
        ("diff-id-count", "config has 2 rootfs.diff_ids for 3 layers"),
        ("diff-id-value", "layer 1: diff id sha256:"),
        ("bootstrap-diff-id", "bootstrap layer diff id is sha256:"),
        (
            "fs-version",
            "bootstrap is RAFS v6 but the layer annotation "
            "containerd.io/snapshot/nydus-fs-version says '5'",
        ),
        ("missing-blob-layer", "of the bootstrap's blob table is not a blob layer of the manifest"),
    ],
)
def test_broken_rules_are_named(image, registry, tmp_path, case, message):
    man, config = copy.deepcopy(image["manifest"]), copy.deepcopy(image["config"])
    layers, diff_ids = man["layers"], config["rootfs"]["diff_ids"]
    new_config = None
    if case == "blob-annotation":
        del layers[0]["annotations"]
    elif case == "blob-media-type":
        layers[1]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    elif case == "bootstrap-value":
        layers[-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] = "yes"
    elif case == "bootstrap-media-type":  # the typo of upstream's design document
        layers[-1]["mediaType"] = "application/vnd.oci.image.layer.v1.tar.gz"
    elif case == "diff-id-count":
        new_config = config
        del diff_ids[0]
    elif case == "diff-id-value":
        new_config = config
        diff_ids[1] = "sha256:" + hashlib.sha256(b"other").hexdigest()
    elif case == "bootstrap-diff-id":
        new_config = config
        diff_ids[-1] = layers[-1]["digest"]  # the gzip digest, not the tar's
    elif case == "fs-version":
        layers[-1]["annotations"]["containerd.io/snapshot/nydus-fs-version"] = "5"
    elif case == "missing-blob-layer":
        new_config = config
        del layers[0], diff_ids[0]
    target = _push_variant(registry, case, man, new_config)
    rc, err = _check(target, tmp_path)
    assert rc == 1 and message in err, err
    assert err.startswith("ERRO[") and ("invalid Nydus" in err)


@marked(*CHECK_FILESYSTEM)
def test_corrupted_blob_data_fails_the_filesystem_check(registry, tmp_path):
    """A flipped byte in a blob the registry stores: nydusd (digest_validate) refuses the
    chunk, check names the file, and the target is unmounted afterwards."""
    layout = Layout(tmp_path / "layout")
    payload = os.urandom(200_000)
    layout.add_image("v1", make_image([arch_layers("amd64")[0], [F("victim.bin", payload)]]))
    push(layout, "v1", f"{registry.host}/corrupt:v1")
    work = tmp_path / "tmp"
    convert(f"{registry.host}/corrupt:v1", f"{registry.host}/corrupt:nydus", work).ok()
    with http(registry) as c:
        man, _, _ = get_manifest(c, "corrupt", "nydus")
    blob = man["layers"][1]["digest"][7:]
    data = registry.root / "docker/registry/v2/blobs/sha256" / blob[:2] / blob / "data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # inside the first (compressed) chunk of victim.bin
    data.write_bytes(bytes(raw))
    run = nydusify(
        "check",
        "--source",
        f"{registry.host}/corrupt:v1",
        "--target",
        f"{registry.host}/corrupt:nydus",
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert run.returncode == 1
    [err] = [ln for ln in run.lines if ln.startswith("ERRO")]
    assert "/victim.bin: cannot read: Input/output error" in err
    assert not is_mounted(tmp_path / "out/fs/target_mounted")
    assert "digest mismatch" in (tmp_path / "out/fs/nydusd.log").read_text()


def test_a_nydus_source_is_refused(image, registry, tmp_path):
    nydus = f"{registry.host}/chk:nydus"
    rc, err = _check(nydus, tmp_path, "--source", nydus, "--source-insecure")
    assert rc == 1 and "source image" in err and "is a Nydus image; give the OCI image" in err
