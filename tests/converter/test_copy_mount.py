"""`nydusify copy` between two real registries (then `nydusify check` and a mount of the
copy), `nydusify mount` until interrupted, and `nydus-image unpack` of a converted image
over the registry backend, each checked against `umoci raw unpack` of the source image."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from nydus.kernel import unmount_all
from tests.converter.conftest import (
    NYDUSIFY,
    REGISTRY_NEEDS,
    convert,
    get_manifest,
    http,
    is_mounted,
    nydusify,
)
from tests.converter.images import Layout, arch_layers, make_image, push, rich_layers, skopeo
from tests.helpers.env import fixture_needs
from tests.helpers.snapshot import compare_trees, snapshot_tree
from tests.helpers.tar import gnu_extract
from tests.registry_fixture import start_registry


@pytest.fixture(scope="module")
@fixture_needs(REGISTRY_NEEDS)
def second_registry(tmp_path_factory):
    r = start_registry(tmp_path_factory.mktemp("registry-b"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.root("umoci unpack keeps owners"), pytest.mark.tools("umoci"))
def converted(registry, tmp_path_factory):
    """The rich image (OCI) in registry A, converted there; umoci's unpack of the source."""
    base = tmp_path_factory.mktemp("copy")
    layout = Layout(base / "layout")
    layout.add_image("rich", make_image(rich_layers()))
    layout.add_index("multi", [make_image(arch_layers(a), arch=a) for a in ("amd64", "arm64")])
    push(layout, "rich", f"{registry.host}/rich:oci")
    push(layout, "multi", f"{registry.host}/multi:oci", all_images=True)
    work = base / "work" / "tmp"
    work.parent.mkdir()
    src, dst = f"{registry.host}/rich:oci", f"{registry.host}/rich:nydus"
    convert(src, dst, work).ok()
    convert(
        f"{registry.host}/multi:oci", f"{registry.host}/multi:nydus", work, "--all-platforms"
    ).ok()
    rootfs = base / "rootfs"
    skopeo("copy", "--src-tls-verify=false", f"docker://{src}", f"oci:{base / 'oci'}:src")
    done = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{base / 'oci'}:src", str(rootfs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    boot = work / registry.host / "rich:nydus" / "bootstrap"
    return {"source": src, "target": dst, "rootfs": rootfs, "bootstrap": boot, "base": base}


def _same_tree(want, got) -> None:
    # directory mtimes: a directory an upper layer only implies gets mtime 0 in the merged
    # bootstrap while umoci keeps the lower layer's (see test_convert)
    assert compare_trees(want, got, ignore_fields={"mtime_ns"}) == []
    sw, sg = snapshot_tree(want), snapshot_tree(got)
    assert {p: e.mtime_ns for p, e in sw.items() if e.type != "dir"} == {
        p: e.mtime_ns for p, e in sg.items() if e.type != "dir"
    }


def _copy(source: str, target: str, tmp_path, *extra: str):
    return nydusify(
        "copy",
        "--source",
        source,
        "--target",
        target,
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "tmp"),
        *extra,
        cwd=tmp_path,
    )


def test_copy_between_registries_then_check_and_mount(
    converted, registry, second_registry, tmp_path
):
    copy_ref = f"{second_registry.host}/rich:copy"
    r = _copy(converted["target"], copy_ref, tmp_path).ok()
    with http(registry) as a, http(second_registry) as b:
        man_a, ctype_a, raw_a = get_manifest(a, "rich", "nydus")
        man_b, ctype_b, raw_b = get_manifest(b, "rich", "copy")
    assert raw_a == raw_b and ctype_a == ctype_b  # the same manifest, digest and all
    assert f"{len(man_a['layers']) + 1} blobs ({len(man_a['layers']) + 1} uploaded" in r.stderr
    # the copy is a valid Nydus image whose files equal the source's, read from registry B
    nydusify(
        "check",
        "--target",
        copy_ref,
        "--source",
        converted["source"],
        "--target-insecure",
        "--source-insecure",
        "--work-dir",
        str(tmp_path / "check"),
        cwd=tmp_path,
    ).ok()
    # copying again uploads nothing
    r = _copy(converted["target"], copy_ref, tmp_path).ok()
    assert "0 uploaded, 0 mounted" in r.stderr


def test_copy_within_a_registry_mounts_blobs(converted, registry, tmp_path):
    r = _copy(converted["target"], f"{registry.host}/other:nydus", tmp_path).ok()
    assert "0 uploaded" in r.stderr and " mounted" in r.stderr
    with http(registry) as c:
        assert get_manifest(c, "other", "nydus")[2] == get_manifest(c, "rich", "nydus")[2]


def test_copy_all_platforms_and_one_platform(converted, registry, second_registry, tmp_path):
    def copy(tag: str, *extra: str) -> None:
        src, dst = f"{registry.host}/multi:nydus", f"{second_registry.host}/multi:{tag}"
        _copy(src, dst, tmp_path, *extra).ok()

    copy("all", "--all-platforms")
    copy("arm", "--platform", "linux/arm64")
    with http(registry) as a, http(second_registry) as b:
        index, _, raw = get_manifest(a, "multi", "nydus")
        assert get_manifest(b, "multi", "all")[2] == raw
        arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
        _, _, raw_arm = get_manifest(b, "multi", "arm")
        assert "sha256:" + hashlib.sha256(raw_arm).hexdigest() == arm["digest"]
        amd = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
        amd_manifest = get_manifest(a, "multi", amd["digest"])[0]
        for layer in amd_manifest["layers"]:  # every blob of each platform came along
            r = b.head(f"/v2/multi/blobs/{layer['digest']}")
            assert r.status_code == 200, layer


def test_copy_bad_source_fails_with_one_line(second_registry, registry, tmp_path):
    r = _copy(f"{registry.host}/nothing:here", f"{second_registry.host}/x:y", tmp_path)
    assert r.returncode != 0 and len([ln for ln in r.lines if ln.startswith("ERRO")]) == 1


def test_mount_until_interrupted(converted, tmp_path):
    mnt = tmp_path / "image-fs"
    proc = subprocess.Popen(
        [
            NYDUSIFY,
            "mount",
            "--target",
            converted["target"],
            "--target-insecure",
            "--mount-path",
            str(mnt),
            "--work-dir",
            str(tmp_path / "tmp"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mnt):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "nydusify mount did not mount in 60 s"
            time.sleep(0.1)
        _same_tree(converted["rootfs"], mnt)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert not is_mounted(mnt)
        assert "Unmounted" in err
        config = tmp_path / "tmp" / "nydusify-mount" / "nydusd-config.json"
        assert not config.exists()  # it may hold credentials
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unmount_all(mnt)


def test_unpack_of_a_converted_image_over_the_registry_backend(
    converted, registry, nydus_image, tmp_path
):
    cfg = {"scheme": "http", "host": registry.host, "repo": "rich"}
    tar = tmp_path / "rich.tar"
    r = subprocess.run(
        [
            nydus_image,
            "unpack",
            str(converted["bootstrap"]),
            "--backend-type",
            "registry",
            "--backend-config",
            json.dumps(cfg),
            "--output",
            str(tar),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = gnu_extract(tar, tmp_path / "x")
    _same_tree(converted["rootfs"], out)
