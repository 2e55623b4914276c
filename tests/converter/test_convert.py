"""`nydusify convert` end to end against a real registry: an OCI and a Docker-schema2 source
with four layers (whiteouts, opaque dirs, hard links, symlinks, devices, xattrs), pushed by
skopeo; the seed's log lines and work dir; the pushed manifest/config/layers against the
golden shape; `nydusify check`; the mount from the registry against `umoci unpack`; skopeo
copies of the result."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nydus.kernel import is_mounted
from tests.converter.conftest import (
    CHECK_FILESYSTEM,
    LOG_LINE,
    Run,
    convert,
    get_blob,
    get_manifest,
    http,
    nydusify,
    registry_config,
)
from tests.converter.images import (
    Image,
    Layout,
    make_image,
    push,
    rich_layers,
    sha256,
    skopeo,
)
from tests.golden import golden_path
from tests.helpers.env import marked
from tests.helpers.layers import D, F, broken_gzip, layer_bytes
from tests.helpers.snapshot import compare_trees, snapshot_tree
from tests.oci.layout import manifest_json

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    "application/vnd.docker.container.image.v1+json": "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
}
EROFS_MAGIC = 0xE0F5E1E2


@dataclass
class Converted:
    kind: str  # oci | v2s2 | v2s2-oci
    source: str  # host/repo:tag
    target: str
    work: Path
    run: Run
    source_digest: str  # of the source manifest as the registry serves it
    source_layers: list[str]


@pytest.fixture(scope="module")
def images(registry, tmp_path_factory) -> dict[str, Converted]:
    """The rich image pushed as OCI and as Docker schema2, converted three ways."""
    base = tmp_path_factory.mktemp("convert")
    layout = Layout(base / "layout")
    layout.add_image("rich", make_image(rich_layers()))
    push(layout, "rich", f"{registry.host}/rich:oci")
    push(layout, "rich", f"{registry.host}/rich:v2s2", v2s2=True)
    out: dict[str, Converted] = {}
    with http(registry) as c:
        for kind, tag, extra in (
            ("oci", "oci", ()),
            ("v2s2", "v2s2", ()),
            ("v2s2-oci", "v2s2", ("--oci",)),
        ):
            src, dst = f"{registry.host}/rich:{tag}", f"{registry.host}/rich:{kind}-nydus"
            work = base / f"work-{kind}" / "tmp"
            work.parent.mkdir()
            run = convert(src, dst, work, *extra).ok()
            man, _, raw = get_manifest(c, "rich", tag)
            out[kind] = Converted(
                kind, src, dst, work, run, sha256(raw), [x["digest"] for x in man["layers"]]
            )
    return out


KINDS = ["oci", "v2s2", "v2s2-oci"]


def _pushed(registry, conv: Converted) -> tuple[dict[str, Any], str, dict[str, Any], bytes]:
    """(manifest, its Content-Type, config, bootstrap layer bytes) of a converted image."""
    with http(registry) as c:
        man, ctype, _ = get_manifest(c, "rich", conv.target.rsplit(":", 1)[1])
        config = json.loads(get_blob(c, "rich", man["config"]["digest"]))
        boot = get_blob(c, "rich", man["layers"][-1]["digest"])
    return man, ctype, config, boot


@pytest.mark.parametrize("kind", KINDS)
def test_convert_prints_the_seed_log_lines(images, registry, kind):
    conv = images[kind]
    lines = conv.run.lines
    assert conv.run.stdout == ""
    assert all(LOG_LINE.match(ln) for ln in lines), lines
    assert not [ln for ln in lines if ln.startswith(("ERRO", "FATA"))]
    man, _, _, _ = _pushed(registry, conv)
    text = [LOG_LINE.sub("", ln) for ln in lines]
    expected = [re.escape(f"Pulling image {conv.source} with platform linux/")]
    for digest in conv.source_layers:
        expected.append(re.escape(f"Building layer {digest}"))
    for layer in man["layers"][:-1]:
        expected.append(re.escape(f"Pushing blob layer {layer['digest']}"))
    expected += [
        re.escape(f"Pushing bootstrap layer {man['layers'][-1]['digest']}"),
        "Pushing nydus manifest",
        re.escape(f"Success convert image {conv.source} to {conv.target}") + "$",
    ]
    for pattern in expected:
        assert any(re.match(pattern, t) for t in text), (pattern, text)
    # order: pulling first, success last, the bootstrap after every blob
    assert re.match(expected[0], text[[i for i, t in enumerate(text) if "Pulling image" in t][0]])
    assert text[-1].startswith("Success convert image")
    boot_at = [i for i, t in enumerate(text) if t.startswith("Pushing bootstrap layer")][0]
    assert all(i < boot_at for i, t in enumerate(text) if t.startswith("Pushing blob layer"))


@pytest.mark.parametrize("kind", KINDS)
def test_work_dir_has_the_seed_layout(images, registry, kind):
    conv = images[kind]
    host, rest = conv.source.split("/", 1)
    src_dir = conv.work / host / rest
    assert sorted(p.name for p in src_dir.iterdir()) == sorted(conv.source_layers)
    for digest in conv.source_layers:
        assert sha256((src_dir / digest).read_bytes()) == digest
    dst_dir = conv.work / host / conv.target.split("/", 1)[1]
    man, _, _, boot_gz = _pushed(registry, conv)
    blob_digests = [x["digest"] for x in man["layers"][:-1]]
    blobs = dst_dir / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == sorted({d[7:] for d in blob_digests})
    for d in blob_digests:
        assert sha256((blobs / d[7:]).read_bytes()) == d
    bootstrap = (dst_dir / "bootstrap").read_bytes()
    assert bootstrap == _tar_member(gzip.decompress(boot_gz), "image/image.boot")
    parent = (dst_dir / "bootstrap-parent").read_bytes()
    for boot in (bootstrap, parent):
        assert struct.unpack_from("<I", boot, 1024)[0] == EROFS_MAGIC
        assert len(boot) % 4096 == 0
    assert parent != bootstrap


def _tar_member(tar: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def _shape(obj: Any) -> Any:
    """Structure of a JSON document: key order, media types and annotations kept; digests,
    sizes and the source reference replaced by placeholders."""
    if isinstance(obj, dict):
        out = []
        items = obj.items() if "mediaType" in obj or "schemaVersion" in obj else sorted(obj.items())
        for k, v in items:  # maps (annotations) by key: Go sorts map keys
            if k in ("digest", "containerd.io/snapshot/nydus-source-digest"):
                v = "<digest>"
            elif k == "size":
                v = "<size>"
            elif k == "containerd.io/snapshot/nydus-source-reference":
                v = "<reference>"
            elif k == "mediaType":
                v = TO_OCI.get(v, v)
            out.append((k, _shape(v)))
        return out
    if isinstance(obj, list):
        return [_shape(x) for x in obj]
    return obj


@pytest.mark.golden
@pytest.mark.parametrize("kind", KINDS)
def test_manifest_config_and_layers_have_upstreams_shape(images, registry, kind):
    conv = images[kind]
    man, ctype, config, boot_gz = _pushed(registry, conv)
    golden_dir = golden_path("oci", "constructed")
    golden = json.loads((golden_dir / "nydus-manifest.json").read_text())
    docker = kind == "v2s2"
    assert ctype == (DOCKER_MANIFEST if docker else OCI_MANIFEST)
    assert man["mediaType"] == ctype
    # every blob layer is shaped like golden's blob layer, the last like golden's bootstrap
    layers = man.pop("layers")
    glayers = golden.pop("layers")
    assert len(layers) == len(conv.source_layers) + 1
    for layer in layers[:-1]:
        assert _shape(layer) == _shape(glayers[0])
        assert layer["mediaType"] == NYDUS_BLOB  # in Docker manifests too
    assert _shape(layers[-1]) == _shape(glayers[-1])
    assert layers[-1]["mediaType"] == (
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        if docker
        else "application/vnd.oci.image.layer.v1.tar+gzip"
    )
    # the rest of the manifest: same keys in the same order, the builder version optional
    man["annotations"].pop("containerd.io/snapshot/nydus-builder-version", None)
    assert _shape(man) == _shape(golden)
    assert man["annotations"]["containerd.io/snapshot/nydus-source-digest"] == conv.source_digest
    assert man["annotations"]["containerd.io/snapshot/nydus-source-reference"] == conv.source
    # the blob layers are raw Nydus blobs: not gzip, a ToC tar header last
    with http(registry) as c:
        source_man, _, _ = get_manifest(c, "rich", conv.source.rsplit(":", 1)[1])
        source_config = json.loads(get_blob(c, "rich", source_man["config"]["digest"]))
        for layer in layers[:-1]:
            blob = get_blob(c, "rich", layer["digest"])
            assert sha256(blob) == layer["digest"] and len(blob) == layer["size"]
            assert blob[:2] != b"\x1f\x8b"
            header = tarfile.TarInfo.frombuf(blob[-512:], "utf-8", "strict")
            assert header.name == "rafs.blob.toc"
    # config: diff ids = blob digests + the bootstrap tar's sha256; one more history entry
    tar = gzip.decompress(boot_gz)
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [x["digest"] for x in layers[:-1]]
        + ["sha256:" + hashlib.sha256(tar).hexdigest()],
    }
    assert config["history"] == source_config["history"] + [
        {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
    ]
    for key in ("config", "architecture", "os", "created"):
        assert config[key] == source_config[key]
    golden_config = json.loads((golden_dir / "nydus-config.json").read_text())
    assert golden_config["history"][-1] == config["history"][-1]
    # bootstrap layer: image/, image/image.boot, then blob.meta files named after blob layers
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
    assert [(m.name, m.type) for m in members[:2]] == [
        ("image", tarfile.DIRTYPE),
        ("image/image.boot", tarfile.REGTYPE),
    ]
    hexes = {x["digest"][7:] for x in layers[:-1]}
    for m in members[2:]:
        assert m.name.startswith("image/") and m.name.endswith(".blob.meta")
        assert m.name[6:-10] in hexes and m.size % 4096 == 0 and m.size > 4096
    boot = _tar_member(tar, "image/image.boot")
    assert struct.unpack_from("<I", boot, 1024)[0] == EROFS_MAGIC


@marked(*CHECK_FILESYSTEM)
@pytest.mark.parametrize("kind", KINDS)
def test_nydusify_check_passes(images, kind, tmp_path):
    conv = images[kind]
    run = nydusify(
        "check",
        "--source",
        conv.source,
        "--target",
        conv.target,
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
    ).ok()
    text = "\n".join(LOG_LINE.sub("", ln) for ln in run.lines)
    for line in (
        "Checking Nydus manifest",
        "Checking Nydus bootstrap",
        f"Verified Nydus image {conv.target}",
    ):
        assert line in text
    m = re.search(
        r"Verified filesystem: (\d+) entries \((\d+) files, (\d+) directories, "
        r"(\d+) symlinks, (\d+) other\), (\d+) bytes",
        text,
    )
    assert m, text
    entries, files, dirs, links, other, nbytes = map(int, m.groups())
    assert (files, links, other) == (18, 2, 3) and dirs >= 15 and nbytes > 500_000
    out = tmp_path / "out"
    target_manifest = json.loads((out / "target/nydus_manifest.json").read_text())
    assert (
        target_manifest["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"]
        == "true"
    )
    assert (
        json.loads((out / "source/oci_manifest.json").read_text())["layers"][0]["digest"]
        == conv.source_layers[0]
    )
    host, rest = conv.target.split("/", 1)
    assert (out / "target/nydus_bootstrap/image/image.boot").read_bytes() == (
        conv.work / host / rest / "bootstrap"
    ).read_bytes()
    assert (
        json.loads((out / "target/nydus_config.json").read_text())["history"][-1]["created_by"]
        == "Nydus Converter"
    )
    assert not is_mounted(out / "fs" / "target_mounted")


@pytest.mark.tools("umoci")
@pytest.mark.parametrize(("kind", "driver"), [("oci", "fuse"), ("v2s2", "fuse"), ("oci", "erofs")])
def test_registry_mount_equals_umoci_unpack(images, registry, nydusd, kind, driver, tmp_path):
    """The seed's registry.json (scheme http, host, repo) mounts the converted image; the tree
    is what umoci unpacks from the source image (also with the kernel's EROFS serving it)."""
    conv = images[kind]
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{conv.source}", f"oci:{layout}:src")
    rootfs = tmp_path / "rootfs"  # `raw unpack`: this image's /etc/passwd is a directory,
    done = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:src", str(rootfs)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # no config.json then
    assert done.returncode == 0, done.stderr
    boot = conv.work / conv.target.split("/", 1)[0] / conv.target.split("/", 1)[1] / "bootstrap"
    extra = (
        ["--fs-driver", "erofs", "--work-dir", str(tmp_path / "work")] if driver == "erofs" else []
    )
    d = nydusd(boot, registry_config(registry.host, "rich"), *extra)
    want, got = snapshot_tree(rootfs), snapshot_tree(d.mountpoint)
    assert compare_trees(want, got, ignore_fields={"mtime_ns"}) == []
    # mtimes of everything but directories: a directory an upper layer only implies (a parent
    # of its entries, no tar entry of its own, e.g. /home here) gets mtime 0 in the merged
    # bootstrap while umoci keeps the lower layer's
    assert {p: e.mtime_ns for p, e in want.items() if e.type != "dir"} == {
        p: e.mtime_ns for p, e in got.items() if e.type != "dir"
    }
    assert got[b"home"].mtime_ns in (0, want[b"home"].mtime_ns)
    # and the data really came from the registry
    backend = d.get("/api/v1/metrics/backend").json()
    assert backend["backend_type"] == "registry" and backend["read_amount_total"] > 500_000
    assert backend["read_errors"] == 0


@pytest.mark.parametrize("kind", ["oci", "v2s2-oci"])
def test_skopeo_copies_the_converted_image_to_an_oci_layout(images, registry, kind, tmp_path):
    conv = images[kind]
    man, ctype, _, _ = _pushed(registry, conv)
    assert ctype == OCI_MANIFEST
    out = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{conv.target}", f"oci:{out}:nydus")
    index = json.loads((out / "index.json").read_text())
    [entry] = index["manifests"]
    copied = (out / "blobs/sha256" / entry["digest"][7:]).read_bytes()
    assert json.loads(copied)["layers"] == man["layers"]  # copied as is, no conversion
    for layer in man["layers"]:
        blob = (out / "blobs/sha256" / layer["digest"][7:]).read_bytes()
        assert sha256(blob) == layer["digest"]


def test_fs_version_5_is_refused_clearly(registry, tmp_path):
    run = nydusify(
        "convert",
        "--source",
        f"{registry.host}/rich:oci",
        "--target",
        f"{registry.host}/rich:v5",
        "--source-insecure",
        "--target-insecure",
        "--fs-version",
        "5",
        "--work-dir",
        str(tmp_path / "tmp"),
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert len(run.lines) == 1 and run.lines[0].startswith("ERRO[")
    assert "--fs-version 5 is not supported" in run.lines[0]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("crc-after-junk", "Incorrect checksum"),
        ("trailing-garbage", "trailing data after the gzip"),
    ],
)
def test_a_broken_gzip_layer_fails_the_conversion(registry, tmp_path, fault, needle):
    """A layer whose digest matches but whose gzip CRC is wrong (after data the tar reader
    never needs) or which has trailing data once converted with exit 0."""
    tar = layer_bytes([D("d"), F("d/big", b"a" * 65536 + bytes(range(256)) * 256)])
    good = make_image([[F("base", b"base\n")]])
    layers = [good.layers[0], broken_gzip(tar, fault)]
    diff_ids = [good.diff_ids[0], sha256(tar)]
    config = json.loads(good.config)
    config["rootfs"]["diff_ids"] = diff_ids
    raw_config = json.dumps(config, separators=(",", ":")).encode()
    layout = Layout(tmp_path / "layout")
    layout.add_image("v1", Image(manifest_json(raw_config, layers), raw_config, layers, diff_ids))
    push(layout, "v1", f"{registry.host}/badgz:v1")
    run = convert(f"{registry.host}/badgz:v1", f"{registry.host}/badgz:nydus", tmp_path / "tmp")
    assert run.returncode != 0
    errors = [ln for ln in run.lines if ln.startswith("ERRO[")]
    assert len(errors) == 1 and needle in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    with http(registry) as c:  # nothing pushed under the target tag
        assert c.get("/v2/badgz/manifests/nydus").status_code == 404


@marked(*CHECK_FILESYSTEM)
def test_implied_parent_directory_keeps_the_lower_metadata(registry, tmp_path):
    layout = Layout(tmp_path / "layout")
    layout.add_image(
        "v1",
        make_image(
            [
                [D("root", mode=0o700, uid=5, gid=6, xattrs={"user.a": b"1"}), F("root/x", b"x")],
                [F("root/.bashrc", b"rc")],
            ]
        ),
    )  # no "root/" entry in the upper layer
    push(layout, "v1", f"{registry.host}/implied:v1")
    convert(f"{registry.host}/implied:v1", f"{registry.host}/implied:nydus", tmp_path / "tmp").ok()
    run = nydusify(
        "check",
        "--source",
        f"{registry.host}/implied:v1",
        "--target",
        f"{registry.host}/implied:nydus",
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.lines[-1]
