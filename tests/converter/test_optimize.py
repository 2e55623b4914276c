"""`nydusify optimize`: record a workload over the lazily mounted image (or take a list), push
the prefetch blob and the new bootstrap in upstream's layout; the result passes `nydusify check`
against the OCI source."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from nydus.format.rafs import open_bootstrap
from tests.converter.conftest import convert, get_blob, get_manifest, http, nydusify
from tests.converter.images import Layout, make_image, push
from tests.helpers.layers import D, F, L

BUSYBOX = "/bin/busybox"
PREFETCH_KEY = "containerd.io/snapshot/nydus-separated-blob-with-prefetch-files"
# the order the workload reads the data files in (never the order they were built in)
READ_ORDER = ["/data/c", "/data/a", "/data/sub/b"]


def _layers() -> list[list]:
    if not os.path.exists(BUSYBOX):
        pytest.skip("no static busybox to run a workload in the image")
    bb = open(BUSYBOX, "rb").read()
    rnd = os.urandom
    base = [
        D("bin"),
        F("bin/busybox", bb, mode=0o755),
        L("bin/sh", "busybox"),
        L("bin/cat", "busybox"),
        L("bin/head", "busybox"),
        D("dev"),
        D("proc"),
        D("data"),
        F("data/a", rnd(300_000)),
        F("data/unread", rnd(50_000)),
    ]
    upper = [D("data"), D("data/sub"), F("data/sub/b", rnd(70_000)), F("data/c", rnd(1_500_000))]
    return [base, upper]


@pytest.fixture(scope="module")
def source(registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("optimize")
    layout = Layout(base / "layout")
    layout.add_image("v1", make_image(_layers(), env=("PATH=/bin", "WORKLOAD_OK=yes")))
    push(layout, "v1", f"{registry.host}/opt:v1")
    work = base / "w" / "tmp"
    work.parent.mkdir()
    convert(f"{registry.host}/opt:v1", f"{registry.host}/opt:nydus", work).ok()
    return {"oci": f"{registry.host}/opt:v1", "nydus": f"{registry.host}/opt:nydus"}


def _bootstrap_files(registry, manifest: dict) -> dict[str, bytes]:
    with http(registry) as c:
        gz = get_blob(c, "opt", manifest["layers"][-1]["digest"])
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gz), mode="r:gz") as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def _optimize(source, tag: str, tmp_path, *extra: str):
    return nydusify(
        "optimize",
        "--source",
        source["nydus"],
        "--target",
        source["nydus"].rsplit(":", 1)[0] + f":{tag}",
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "work"),
        *extra,
        cwd=tmp_path,
    )


def test_workload_is_recorded_in_first_access_order(source, registry, tmp_path):
    # the workload also checks it runs with the image's environment, from its root
    script = (
        'test "$WORKLOAD_OK" = yes || exit 3; cat /data/c > /dev/null; '
        "head -c 10 /data/a > /dev/null; cat /data/sub/b > /dev/null"
    )
    r = _optimize(source, "opt", tmp_path, "--workload", f"/bin/sh -c '{script}'")
    r.ok()
    assert "workload exited" not in r.stderr
    out = json.loads(r.stdout)
    with http(registry) as c:
        src_man, _, _ = get_manifest(c, "opt", "nydus")
        man, _, _ = get_manifest(c, "opt", "opt")
        config = json.loads(get_blob(c, "opt", man["config"]["digest"]))
    # layout: the source blob layers, the prefetch blob, the new bootstrap layer
    assert man["layers"][:-2] == src_man["layers"][:-1]
    blob = man["layers"][-2]
    assert blob["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1"
    assert blob["annotations"] == {"containerd.io/snapshot/nydus-blob": "true"}
    assert blob["digest"] == "sha256:" + out["prefetch_blob"]
    boot = man["layers"][-1]
    assert boot["annotations"][PREFETCH_KEY] == out["prefetch_blob"]
    assert boot["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert config["rootfs"]["diff_ids"][:-1] == [d["digest"] for d in man["layers"][:-1]]
    files = _bootstrap_files(registry, man)
    listing = files["image/prefetch.files"].decode().splitlines()
    assert [p for p in listing if p.startswith("/data/")] == READ_ORDER
    assert "/bin/busybox" in listing  # exec'd first: read before any data file
    assert listing.index("/bin/busybox") < listing.index(READ_ORDER[0])
    sb = open_bootstrap(files["image/image.boot"])
    assert len(sb.blobs) == len(man["layers"]) - 1
    assert sb.blobs[-1].blob_id == out["prefetch_blob"]
    assert f"image/{out['prefetch_blob']}.blob.meta" in files
    # the prefetch table is the list, and the listed files' chunks are in the new blob
    ino = {}
    for path in listing:
        n = sb.root_ino
        for part in path.strip("/").split("/"):
            n = sb.lookup(n, part.encode())
        ino[path] = n
    assert sb.prefetch_inos() == [ino[p] for p in listing]
    new = len(sb.blobs) - 1
    order = [(c.blob_index, c.ci_index) for p in READ_ORDER for c in sb.chunks(ino[p])]
    assert [bi for bi, _ in order] == [new] * len(order)
    cis = [ci for _, ci in order]
    assert cis == sorted(cis)  # in read order within the blob
    r = nydusify(
        "check",
        "--source",
        source["oci"],
        "--target",
        source["nydus"].rsplit(":", 1)[0] + ":opt",
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "check"),
        cwd=tmp_path,
    )
    r.ok()


def test_a_given_list_and_its_errors(source, registry, tmp_path):
    listing = tmp_path / "list"
    listing.write_text("/data/sub/b\n/nope\n/data/a\n")
    r = _optimize(source, "listed", tmp_path, "--prefetch-files", str(listing)).ok()
    assert json.loads(r.stdout)["files"] == 2
    with http(registry) as c:
        man, _, _ = get_manifest(c, "opt", "listed")
    files = _bootstrap_files(registry, man)
    assert files["image/prefetch.files"] == listing.read_bytes()
    # optimizing an optimized image, bad policies and bad lists are refused in one line
    for extra, message in (
        (("--prefetch-files", str(listing), "--policy", "whole-image"), "unsupported --policy"),
        ((), "exactly one of --prefetch-files and --workload"),
        (("--prefetch-files", str(tmp_path / "missing")), "cannot read prefetch files"),
        (("--workload", "/bin/true", "--workload-timeout", "0"), "--workload-timeout"),
    ):
        r = _optimize(source, "bad", tmp_path, *extra)
        assert r.returncode != 0, extra
        assert message in r.lines[-1], (extra, r.stderr)
    r = nydusify(
        "optimize",
        "--source",
        source["nydus"].rsplit(":", 1)[0] + ":listed",
        "--target",
        source["nydus"].rsplit(":", 1)[0] + ":twice",
        "--source-insecure",
        "--target-insecure",
        "--prefetch-files",
        str(listing),
        "--work-dir",
        str(tmp_path / "work"),
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "optimized already" in r.lines[-1]
