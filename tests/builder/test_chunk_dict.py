"""Chunk dictionaries with `nydus-image`: `chunkdict generate` from two related images, then
`create --chunk-dict bootstrap=PATH` of a third, whose blob shrinks by exactly the chunks the
dictionary holds and which still reads back equal to its source through our nydusd and
through the kernel (the image exported as one EROFS disk); and `compact` of a layered image."""

from __future__ import annotations

import json
import random

import pytest

from tests.builder.conftest import CS, image_ok, run_nydus_image
from tests.daemon.conftest import localfs_config
from tests.helpers.erofs import mount_erofs
from tests.helpers.snapshot import compare_trees

pytestmark = pytest.mark.usefixtures("erofs_env")


def _tree(root, common: dict[str, bytes], own_seed: int) -> None:
    r = random.Random(own_seed)
    for rel, data in common.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for i in range(6):
        p = root / "own" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(r.randbytes(r.randint(1, 3 * CS)))
    (root / "own" / "text.txt").write_text(f"version {own_seed}\n" * 300)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    base = tmp_path_factory.mktemp("chunkdict")
    r = random.Random(5)
    common = {f"lib/c{i}.bin": r.randbytes(r.randint(100, 4 * CS)) for i in range(24)}
    common["lib/zeros"] = bytes(2 * CS)
    for v in (1, 2, 3):
        _tree(base / f"v{v}", common, v)
    # v1 and v2 also share a file v3 lacks: in the dictionary, but not used by v3
    for v in (1, 2):
        (base / f"v{v}" / "only12.bin").write_bytes(random.Random(12).randbytes(CS + 9))
    return base


def _ci(path, blob_dir):
    """{blob id: {chunk digest: compressed size}} of the blobs a bootstrap uses."""
    from nydus.builder.source_image import open_image, source_backend

    with open_image(str(path), source_backend(blob_dir=str(blob_dir))) as src:
        assert src.device is not None
        out = {}
        for b in src.sb.blobs:
            # digests come from the chunk table: known for the chunks this image references
            chunks = src.device.meta(b.blob_index).chunks or []
            out[b.blob_id] = {c.digest: c.compressed_size for c in chunks if c.digest}
        return out


def test_dictionary_shrinks_the_third_image_which_still_reads_back(
    versions,
    nydus_image,
    nydusd,
    tmp_path,
):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    boot = {}
    for v in (1, 2, 3):
        boot[v] = tmp_path / f"v{v}.boot"
        image_ok(
            nydus_image,
            "create",
            versions / f"v{v}",
            "-B",
            boot[v],
            "-D",
            blobs,
            "--chunk-size",
            hex(CS),
        )
    dict_boot = tmp_path / "dict.boot"
    out = tmp_path / "dict.json"
    image_ok(
        nydus_image,
        "chunkdict",
        "generate",
        "--database",
        "sqlite:///unused.db",
        "-B",
        dict_boot,
        "-J",
        out,
        boot[1],
        boot[2],
    )
    dict_blobs = json.loads(out.read_text())["blobs"]
    assert len(dict_blobs) == 1  # shared chunks are taken from v1's blob
    boot3d = tmp_path / "v3d.boot"
    report = tmp_path / "v3d.json"
    image_ok(
        nydus_image,
        "create",
        versions / "v3",
        "-B",
        boot3d,
        "-D",
        blobs,
        "--chunk-size",
        hex(CS),
        "--chunk-dict",
        f"bootstrap={dict_boot}",
        "-J",
        report,
    )
    table = json.loads(report.read_text())["blobs"]
    assert table[0] == dict_blobs[0] and len(table) == 2  # the dictionary blob, then its own
    plain = _ci(boot[3], blobs)
    with_dict = _ci(boot3d, blobs)
    dict_chunks = _ci(dict_boot, blobs)[dict_blobs[0]]
    (own_plain,) = plain.values()
    own_dict = with_dict[table[1]]
    # the chunks the dictionary offered are not stored again, exactly
    shared = {d for d in own_plain if d in dict_chunks}
    assert len(own_plain) - len(own_dict) == len(shared) > 20
    assert not shared & set(own_dict)
    saved = sum(own_plain.values()) - sum(own_dict.values())
    shared_bytes = sum(own_plain[d] for d in shared)
    assert saved == shared_bytes > 4 * CS
    size_plain = (blobs / next(iter(plain))).stat().st_size
    size_dict = (blobs / table[1]).stat().st_size
    assert shared_bytes <= size_plain - size_dict <= shared_bytes + 64 * len(shared) + 8192
    # our nydusd (digest validation on) and the kernel read the third image back
    d = nydusd(boot3d, localfs_config(blobs, digest_validate=True))
    assert compare_trees(versions / "v3", d.mountpoint) == []
    disk = tmp_path / "v3d.disk"
    image_ok(nydus_image, "export", "--block", "-B", boot3d, "-D", blobs, "-O", disk)
    with mount_erofs(disk, mountpoint=tmp_path / "m") as mnt:
        assert compare_trees(versions / "v3", mnt) == []
    # the dictionary itself is a mountable image of its chunks
    d = nydusd(dict_boot, localfs_config(blobs, digest_validate=True))
    files = [p for p in d.mountpoint.rglob("*") if p.is_file()]
    assert len(files) == len(dict_chunks) and all(p.stat().st_size > 0 for p in files)


def test_chunk_dict_bad_inputs(versions, nydus_image, tmp_path):
    out = tmp_path / "x.boot"
    r = run_nydus_image(
        nydus_image,
        ["create", versions / "v1", "-B", out, "-D", tmp_path, "--chunk-dict", "bootstrap=/nope"],
    )
    assert r.returncode != 0 and "/nope" in r.stderr and not out.exists()
    r = run_nydus_image(
        nydus_image,
        ["create", versions / "v1", "-B", out, "-D", tmp_path, "--chunk-dict", "blob=/x"],
    )
    assert r.returncode != 0 and "bootstrap=PATH" in r.stderr
    # a dictionary of another chunk size is refused, naming both sizes
    boot = tmp_path / "v1.boot"
    image_ok(
        nydus_image, "create", versions / "v1", "-B", boot, "-D", tmp_path, "--chunk-size", hex(CS)
    )
    r = run_nydus_image(
        nydus_image, ["create", versions / "v2", "-B", out, "-D", tmp_path, "--chunk-dict", boot]
    )
    assert r.returncode != 0 and "0x10000" in r.stderr and "0x100000" in r.stderr
