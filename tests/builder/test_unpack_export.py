"""`nydus-image unpack`, `export --block [--verity]` and `stat` on built images.

Oracles: GNU tar extracts the unpacked tar (xattrs, ACLs, hard links, devices, ns mtimes);
the kernel mounts the exported disk image alone (`mount -t erofs` over a loop device, no
`device=`); `veritysetup verify` checks the dm-verity data. Known, specified difference: the
builder never shares an inode between symlinks (spec 4.7), so hard links are compared among
regular files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile

import pytest

from tests.builder.conftest import CS, image_ok, run_nydus_image
from tests.helpers.erofs import mount_erofs
from tests.helpers.snapshot import compare_trees
from tests.helpers.tar import gnu_extract

pytestmark = pytest.mark.usefixtures("erofs_env")


@pytest.fixture(scope="module")
def image(full_tree, create, tmp_path_factory):
    """The full tree (zstd) plus an upper layer on it: two blobs, a whiteout, a new file."""
    base = tmp_path_factory.mktemp("toolbox")
    lower = create(full_tree.root, base, compressor="zstd", blob_dir=base / "blobs")
    upper_src = base / "upper-src"
    (upper_src / "nested").mkdir(parents=True)
    (upper_src / "nested" / "new.bin").write_bytes(os.urandom(3 * CS + 5))
    os.mknod(upper_src / "small.txt", 0o020000, os.makedev(0, 0))  # overlayfs whiteout
    upper = create(
        upper_src,
        base,
        "--parent-bootstrap",
        lower.bootstrap,
        "--whiteout-spec",
        "overlayfs",
        compressor="zstd",
        blob_dir=base / "blobs",
        name="upper",
    )
    assert len(upper.blobs) == 2
    return {"base": base, "lower": lower, "upper": upper, "blobs": base / "blobs", "src": full_tree}


def test_unpack_equals_source_tree(image, nydus_image, tmp_path):
    tar = tmp_path / "out.tar"
    image_ok(nydus_image, "unpack", image["lower"].bootstrap, "-D", image["blobs"], "--output", tar)
    with tarfile.open(tar) as tf:  # the format details GNU tar does not show
        members = {m.name: m for m in tf}
    assert "" not in members and "./" not in members  # the root is left out, as upstream
    long_names = [m for m in members.values() if len(os.fsencode(m.name)) > 100]
    assert long_names and all(m.pax_headers.get("path") == m.name for m in long_names)
    first = image["src"].hardlinks[0].decode()  # the first name of a 3-name file in walk order
    links = {m.name for m in members.values() if m.islnk() and m.linkname == first}
    assert links | {first} == {p.decode() for p in image["src"].hardlinks}
    assert members[first].isreg()
    assert members[os.fsdecode(image["src"].long_name)].pax_headers["path"]
    gnu_extract(tar, tmp_path / "x")
    assert compare_trees(image["src"].root, tmp_path / "x", hardlink_types=["reg"]) == []


def test_unpack_of_a_layered_image_applies_the_upper_layer(image, nydus_image, tmp_path):
    tar = tmp_path / "out.tar"
    image_ok(
        nydus_image, "unpack", "-B", image["upper"].bootstrap, "-D", image["blobs"], "--output", tar
    )
    gnu_extract(tar, tmp_path / "x")
    src = image["src"].root
    assert not (tmp_path / "x" / "small.txt").exists()
    assert (tmp_path / "x" / "nested" / "new.bin").read_bytes() == (
        image["base"] / "upper-src" / "nested" / "new.bin"
    ).read_bytes()
    assert (tmp_path / "x" / "multi-chunk.bin").read_bytes() == (
        src / "multi-chunk.bin"
    ).read_bytes()


def test_unpack_bad_inputs_fail_cleanly(image, nydus_image, tmp_path):
    out = tmp_path / "out.tar"
    r = run_nydus_image(nydus_image, ["unpack", image["lower"].bootstrap, "--output", out])
    assert r.returncode != 0 and "blob" in r.stderr and not out.exists()
    assert len([ln for ln in r.stderr.splitlines() if "ERROR" in ln]) == 1
    # a corrupted chunk: the digest check fails the unpack and nothing is left behind
    bad = tmp_path / "blobs"
    bad.mkdir()
    blob = image["lower"].blobs[0]
    data = bytearray((image["blobs"] / blob).read_bytes())
    data[100] ^= 0xFF
    (bad / blob).write_bytes(data)
    r = run_nydus_image(
        nydus_image, ["unpack", image["lower"].bootstrap, "-D", bad, "--output", out]
    )
    assert r.returncode != 0, r.stderr
    assert re.search(r"digest|decompress|corrupt", r.stderr, re.IGNORECASE), r.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_block_mounts_alone_and_equals_the_source(image, nydus_image, tmp_path):
    disk = tmp_path / "disk.img"
    image_ok(
        nydus_image,
        "export",
        "--block",
        "-B",
        image["upper"].bootstrap,
        "-D",
        image["blobs"],
        "-O",
        disk,
    )
    # bootstrap first, byte for byte (the stored blob addresses were usable)
    boot = image["upper"].bootstrap.read_bytes()
    assert disk.read_bytes()[: len(boot)] == boot
    with mount_erofs(disk, mountpoint=tmp_path / "m") as mnt:
        tar = tmp_path / "ref.tar"
        image_ok(
            nydus_image, "unpack", image["upper"].bootstrap, "-D", image["blobs"], "--output", tar
        )
        gnu_extract(tar, tmp_path / "ref")
        assert compare_trees(tmp_path / "ref", mnt, hardlink_types=["reg"]) == []
    with mount_erofs(disk, mountpoint=tmp_path / "m2") as mnt:
        assert (
            compare_trees(
                image["src"].root, mnt, hardlink_types=["reg"], ignore_fields={"mtime_ns"}
            )
            != []
        )  # the upper layer really is in there
        assert not (mnt / "small.txt").exists()


def test_export_default_output_and_verity(image, nydus_image, tmp_path):
    boot = image["lower"].bootstrap
    r = image_ok(nydus_image, "export", "--block", "-B", boot, "-D", image["blobs"], "--verity")
    disk = image["blobs"] / (boot.name + ".disk")
    try:
        m = re.fullmatch(r"dm-verity options: (.*) ([0-9a-f]{64})", r.stdout.strip())
        assert m, r.stdout
        opts = m.group(1).replace('-s ""', "-s=").split()
        root = m.group(2)
        blocks = int(opts[opts.index("--data-blocks") + 1])
        offset = int(opts[opts.index("--hash-offset") + 1])
        assert offset == blocks * 4096 < disk.stat().st_size
        verify = ["veritysetup", "verify", *opts, str(disk), str(disk)]
        done = subprocess.run([*verify, root], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        wrong = ("0" if root[0] != "0" else "1") + root[1:]
        assert subprocess.run([*verify, wrong], capture_output=True).returncode != 0
        with mount_erofs(disk, mountpoint=tmp_path / "m") as mnt:  # the hash area is ignored
            assert compare_trees(image["src"].root, mnt, hardlink_types=["reg"]) == []
        # one flipped data byte fails verification
        with open(disk, "r+b") as f:
            f.seek(blocks * 4096 - 1)
            last = f.read(1)
            f.seek(blocks * 4096 - 1)
            f.write(bytes([last[0] ^ 1]))
        assert subprocess.run([*verify, root], capture_output=True).returncode != 0
    finally:
        disk.unlink(missing_ok=True)


def test_export_relays_blobs_whose_slots_overlap(image, nydus_image, tmp_path):
    """A bootstrap whose device slots put a blob inside the bootstrap (mapped_blkaddr 1)."""
    boot = bytearray(image["lower"].bootstrap.read_bytes())
    boot[1408 + 68 : 1408 + 72] = (1).to_bytes(4, "little")
    patched = tmp_path / "patched.boot"
    patched.write_bytes(boot)
    disk = tmp_path / "disk.img"
    r = image_ok(nydus_image, "export", "--block", "-B", patched, "-D", image["blobs"], "-O", disk)
    assert "relaid" in r.stderr
    with mount_erofs(disk, mountpoint=tmp_path / "m") as mnt:
        assert compare_trees(image["src"].root, mnt, hardlink_types=["reg"]) == []


def test_export_refuses_a_chunk_index_the_kernel_would_misread(image, nydus_image, tmp_path):
    from nydus.format.rafs import open_bootstrap

    raw = image["lower"].bootstrap.read_bytes()
    sb = open_bootstrap(raw)
    nid = sb.lookup(sb.root_ino, b"multi-chunk.bin")
    ino = sb.inode(nid)
    off = (sb.inode_offset(nid) + ino.inode_size + ino.xattr_size + 7) & ~7
    boot = bytearray(raw)
    blk = int.from_bytes(boot[off + 4 : off + 8], "little")
    boot[off + 4 : off + 8] = (blk + 1).to_bytes(4, "little")
    bad = tmp_path / "bad.boot"
    bad.write_bytes(boot)
    disk = tmp_path / "disk.img"
    r = run_nydus_image(
        nydus_image, ["export", "--block", "-B", bad, "-D", image["blobs"], "-O", disk]
    )
    assert r.returncode != 0 and "multi-chunk.bin" in r.stderr and not disk.exists()


def test_stat_counts_and_dedup(image, nydus_image, tmp_path):
    lower, upper = image["lower"], image["upper"]
    d = tmp_path / "boots"
    d.mkdir()
    (d / "lower").write_bytes(lower.bootstrap.read_bytes())
    (d / "upper").write_bytes(upper.bootstrap.read_bytes())
    out = tmp_path / "stat.json"
    r = image_ok(nydus_image, "stat", "-D", d, "-T", lower.bootstrap, "-J", out)
    doc = json.loads(out.read_text())
    base, target = doc["base_image"], doc["target_image"]
    assert doc["dedup_enabled"] and doc["target_enabled"]
    one = json.loads(
        (
            image_ok(nydus_image, "stat", "-B", lower.bootstrap, "-J", tmp_path / "one.json"),
            (tmp_path / "one.json").read_text(),
        )[1]
    )["base_image"]
    # the upper image holds the lower's files plus one new 3-chunk-and-a-tail file, minus one
    assert base["files"] == 2 * one["files"]
    assert base["own_chunks"] == 2 * one["own_chunks"] + 4 - 1  # small.txt's chunk is gone
    assert base["dedup_chunks"] == one["own_chunks"] + 4
    # the target (= lower) is wholly in the base: every distinct chunk referenced
    assert target["ref_chunks"] == one["own_chunks"] and target["own_chunks"] == 0
    assert target["ref_comp_size"] == one["own_comp_size"]
    assert "Dedup against the base would save" in r.stdout
    # threshold t: chunks found in >= t images are stored once, the others in each image
    t1, t2, t3 = doc["dedup_info"][:3]
    assert t1["dedup_chunks"] == t2["dedup_chunks"] == base["dedup_chunks"]
    assert t1["comp_image_size"] == 0 and t1["comp_base_size"] == base["dedup_comp_size"]
    assert 0 < t2["comp_image_size"] < t2["comp_base_size"]
    assert t3["dedup_chunks"] == base["own_chunks"] and t3["comp_base_size"] == 0
