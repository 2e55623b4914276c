"""Blobs in a real S3 gateway (SeaweedFS on loopback): `nydusify convert --backend-type s3`
pushes the blob layers to the bucket and only the bootstrap to the registry, `nydusify
check` verifies such an image (mounting it from the bucket), nydusd reads it lazily from S3,
and bad credentials or a missing bucket give one clear error."""

from __future__ import annotations

import json
import os
import random

import pytest

from nydus.config import parse_backend_config
from nydus.storage.objstore import ObjectStoreClient, store_from_config
from tests.converter.conftest import (
    CHECK_FILESYSTEM,
    convert,
    get_manifest,
    http,
    nydusify,
    read_amount,
)
from tests.converter.images import Layout, make_image, push
from tests.helpers.env import fixture_needs, marked
from tests.helpers.layers import D, F
from tests.s3_fixture import start_seaweedfs, weed_binary

SMALL = {f"etc/conf/{i:02d}.conf": f"setting {i} = {i * i}\n".encode() * 20 for i in range(30)}


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.tools(weed_binary() or "weed"))
def s3(tmp_path_factory):
    gw = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield gw
    gw.stop()


def _s3_config(s3, **extra) -> dict:
    return s3.backend_config(**{"object_prefix": "nydus/blobs/", **extra})


def _nydusd_config(s3, **extra) -> dict:
    return {
        "device": {"backend": {"type": "s3", "config": _s3_config(s3, **extra)}},
        "mode": "direct",
        "digest_validate": True,
        "enable_xattr": True,
    }


@pytest.fixture(scope="module")
def converted(registry, s3, tmp_path_factory):
    base = tmp_path_factory.mktemp("s3conv")
    rng = random.Random(14)
    big = rng.randbytes(6_000_000)  # incompressible: most of the blob bytes
    layers = [
        [D("etc"), D("etc/conf"), *(F(k, v) for k, v in SMALL.items())],
        [D("data"), F("data/big.bin", big), F("data/note.txt", b"in the second layer\n")],
    ]
    layout = Layout(base / "layout")
    layout.add_image("v1", make_image(layers))
    push(layout, "v1", f"{registry.host}/objs:v1")
    cfg_file = base / "s3.json"
    cfg_file.write_text(json.dumps(_s3_config(s3)))
    work = base / "w" / "tmp"
    work.parent.mkdir()
    run = convert(
        f"{registry.host}/objs:v1",
        f"{registry.host}/objs:nydus",
        work,
        "--backend-type",
        "s3",
        "--backend-config-file",
        str(cfg_file),
    ).ok()
    assert s3.secret_key not in run.stderr + run.stdout
    out = work / registry.host / "objs:nydus"
    blobs = sorted((out / "blobs").iterdir())
    return {
        "source": f"{registry.host}/objs:v1",
        "target": f"{registry.host}/objs:nydus",
        "boot": out / "bootstrap",
        "blobs": blobs,
        "cfg_file": cfg_file,
        "big": big,
    }


def test_blobs_go_to_the_bucket_and_only_the_bootstrap_to_the_registry(converted, registry, s3):
    with http(registry) as c:
        man, _, _ = get_manifest(c, "objs", "nydus")
        assert [la["annotations"] for la in man["layers"]] == [
            {
                "containerd.io/snapshot/nydus-bootstrap": "true",
                "containerd.io/snapshot/nydus-fs-version": "6",
            }
        ]
        config = json.loads(c.get(f"/v2/objs/blobs/{man['config']['digest']}").content)
        assert config["rootfs"]["diff_ids"] == [config["rootfs"]["diff_ids"][-1]]
        for blob in converted["blobs"]:
            assert c.head(f"/v2/objs/blobs/sha256:{blob.name}").status_code == 404
    store = store_from_config(parse_backend_config("s3", _s3_config(s3)))
    assert len(converted["blobs"]) == 2
    with ObjectStoreClient(store) as client:
        for blob in converted["blobs"]:
            assert client.exists(f"nydus/blobs/{blob.name}"), blob.name


@marked(*CHECK_FILESYSTEM)
def test_check_mounts_the_image_from_the_bucket_and_compares(converted, tmp_path):
    run = nydusify(
        "check",
        "--source",
        converted["source"],
        "--target",
        converted["target"],
        "--source-insecure",
        "--target-insecure",
        "--target-backend-type",
        "s3",
        "--target-backend-config-file",
        str(converted["cfg_file"]),
        "--work-dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "All 2 blobs are in the s3 backend" in run.stderr
    # without the backend, check says what it needs instead of failing obscurely
    run = nydusify(
        "check",
        "--source",
        converted["source"],
        "--target",
        converted["target"],
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "out2"),
        cwd=tmp_path,
    )
    errors = [ln for ln in run.lines if ln.startswith("ERRO")]
    assert run.returncode != 0 and len(errors) == 1, run.stderr
    assert "--target-backend-type" in errors[0]


def test_nydusd_reads_lazily_from_s3(converted, s3, nydusd):
    d = nydusd(converted["boot"], _nydusd_config(s3))
    mnt = d.mountpoint
    at_mount = read_amount(d)
    assert at_mount["backend_type"] == "s3"
    name, data = "etc/conf/07.conf", SMALL["etc/conf/07.conf"]
    assert (mnt / name).read_bytes() == data
    after = read_amount(d)
    fetched = after["read_amount_total"] - at_mount["read_amount_total"]
    total = sum(b.stat().st_size for b in converted["blobs"])
    assert 0 < fetched <= (1 << 20) + 64 * 1024, fetched
    assert fetched < 0.2 * total, (fetched, total)
    # the whole tree reads back as the source wrote it
    for k, v in SMALL.items():
        assert (mnt / k).read_bytes() == v
    assert (mnt / "data/big.bin").read_bytes() == converted["big"]
    assert after["read_errors"] == read_amount(d)["read_errors"] == 0
    info = d.get("/api/v1/daemon").text
    assert s3.secret_key not in info and s3.secret_key not in d.log()


def test_wrong_keys_are_one_clear_error(converted, s3, nydusd, tmp_path):
    bad = _nydusd_config(s3, access_key_secret="wrong-secret", retry_limit=3)
    d = nydusd(converted["boot"], bad, wait=False)
    assert d.proc.wait(timeout=60) != 0
    log = d.log()
    errors = [ln for ln in log.splitlines() if "ERROR" in ln]
    assert len(errors) == 1, log
    assert "authentication failed for bucket nydus" in errors[0]
    assert "SignatureDoesNotMatch" in errors[0]
    assert "; retry" not in log  # no retry storm, even with retry_limit 3
    # nydusify: one ERROR line, nothing pushed to the registry
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(_s3_config(s3, access_key_id="AKIDUNKNOWN")))
    work = tmp_path / "w" / "tmp"
    work.parent.mkdir()
    run = convert(
        converted["source"],
        converted["target"].replace(":nydus", ":bad"),
        work,
        "--backend-type",
        "s3",
        "--backend-config-file",
        str(cfg),
    )
    errors = [ln for ln in run.lines if ln.startswith("ERRO")]
    assert run.returncode != 0 and len(errors) == 1, run.stderr
    assert "authentication failed" in errors[0] and "bucket nydus" in errors[0]
    assert "Traceback" not in run.stderr


def test_missing_bucket_and_object_are_named(converted, s3, nydusd):
    d = nydusd(converted["boot"], _nydusd_config(s3, bucket_name="no-such-bucket"), wait=False)
    assert d.proc.wait(timeout=60) != 0
    assert "bucket no-such-bucket" in d.log() and "does not exist" in d.log()
    d = nydusd(converted["boot"], _nydusd_config(s3, object_prefix="elsewhere/"), wait=False)
    assert d.proc.wait(timeout=60) != 0
    errors = [ln for ln in d.log().splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "not found in bucket nydus" in errors[0], d.log()
    assert any(f"object elsewhere/{b.name} " in errors[0] for b in converted["blobs"])


def test_unreachable_endpoint_fails_reads_in_bounded_time(converted, s3, nydusd):
    """Blob meta loads after the mount: an endpoint that is down (not a refusal of our
    credentials) does not stop the daemon; each read fails with EIO in bounded time."""
    import errno
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = _nydusd_config(s3, endpoint=f"127.0.0.1:{port}", timeout=2, connect_timeout=1)
    cfg["device"]["backend"]["config"]["retry_limit"] = 1
    d = nydusd(converted["boot"], cfg)
    path = next(
        os.path.join(dp, f)
        for dp, _dn, fn in os.walk(d.mountpoint)
        for f in fn
        if os.path.isfile(os.path.join(dp, f)) and os.path.getsize(os.path.join(dp, f))
    )
    t0 = time.monotonic()
    with pytest.raises(OSError) as exc:
        open(path, "rb").read()
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - t0 < 20
    assert d.alive()
    assert "Connect" in d.log() or "refused" in d.log(), d.log()
