"""RAFS v6 records round-trip and decode the upstream golden image to the values of
rafs-format.md §13.1; the same records of an image of our own (tests/image_factory.py) decode,
repack to the same bytes and agree with the source tree (no golden set needed)."""

from __future__ import annotations

import hashlib
import os
import stat
import struct

import pytest

from nydus.errors import FormatError
from nydus.format.blobmeta import (
    BlobMetaHeader,
    ChunkMeta,
    parse_tar_header,
    parse_toc,
    tar_header,
    unpack_ci_array,
)
from nydus.format.constants import BlobFeatures
from nydus.format.rafs import open_bootstrap, walk
from nydus.format.v6 import (
    BlobInfo,
    ChunkAddr,
    ChunkInfo,
    DeviceSlot,
    Dirent,
    ExtSuperBlock,
    Inode,
    SuperBlock,
    erofs_to_rdev,
    pack_dir_blocks,
    pack_xattrs,
    rdev_to_erofs,
    unpack_dir_block,
    unpack_xattrs,
)
from nydus.utils.compress import Compressor
from tests.golden import V6_BLOB_ID, golden_path
from tests.helpers.env import fixture_needs
from tests.image_factory import OwnImage, build_image


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.golden)
def boot() -> bytes:
    return golden_path("upstream", "v6", "bootstrap").read_bytes()


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.golden)
def blob() -> bytes:
    return golden_path("upstream", "v6", "blobs", V6_BLOB_ID).read_bytes()


def test_superblocks_decode_and_repack(boot: bytes) -> None:
    sb = SuperBlock.unpack(boot[1024:1152])
    assert (sb.root_nid, sb.inos, sb.blocks, sb.meta_blkaddr, sb.extra_devices) == (128, 3, 9, 2, 1)
    assert sb.pack() == boot[1024:1152]
    ext = ExtSuperBlock.unpack(boot[1152:1408])
    assert ext.flags == 0x194 and ext.chunk_size == 0x100000
    assert (ext.blob_table_offset, ext.blob_table_size) == (4096, 256)
    assert (ext.chunk_table_offset, ext.chunk_table_size) == (16384, 160)
    assert ext.pack() == boot[1152:1408]
    slot = DeviceSlot.unpack(boot, 1408)
    assert slot == DeviceSlot(V6_BLOB_ID, 9, 512)
    assert slot.pack() == boot[1408:1536]


def test_blob_table_entry(boot: bytes) -> None:
    b = BlobInfo.unpack(boot, 4096)
    assert b.blob_id == V6_BLOB_ID and b.chunk_count == 2 and b.compressor == 3
    assert b.features == 0x7000_0021 and b.compressed_size == 14554
    assert b.uncompressed_size == 36864 and b.blob_toc_size == 1024
    assert (b.ci_offset, b.ci_compressed_size, b.ci_uncompressed_size) == (8314, 32, 32)
    assert (
        b.blob_toc_digest.hex()
        == "cfc89ed0739aef4eb1bf0904f0dfdb1c857134eca7319465baae95a99b84acde"
    )
    assert b.pack() == boot[4096:4352]
    b.validate(0, 0x100000)


def test_inodes_dirents_chunk_indexes(boot: bytes) -> None:
    root = Inode.unpack(boot, 12288)
    assert (root.layout, root.mode, root.size, root.nlink) == (2, 0o40755, 67, 2)
    assert root.pack() == boot[12288:12352]
    ents = unpack_dir_block(boot[12352 : 12352 + 67], 67)
    assert [(d.name, d.nid, d.file_type) for d in ents] == [
        (b".", 128, 2),
        (b"..", 128, 2),
        (b"lib.rs", 133, 1),
        (b"sync_io.rs", 136, 1),
    ]
    blocks, size = pack_dir_blocks(ents)
    assert size == 67 and blocks == [boot[12352 : 12352 + 67]]
    lib = Inode.unpack(boot, 8192 + 133 * 32)
    assert (lib.size, lib.i_u, lib.ino, lib.mtime, lib.mtime_nsec) == (
        16931,
        0x28,
        2,
        1676819553,
        628661334,
    )
    assert ChunkAddr.unpack(boot, 8192 + 133 * 32 + 64) == ChunkAddr(0, 0, 0)
    assert ChunkAddr.unpack(boot, 8192 + 136 * 32 + 64) == ChunkAddr(0, 1, 5)
    assert ChunkAddr(0, 1, 5).pack() == boot[8192 + 136 * 32 + 64 : 8192 + 136 * 32 + 72]


def test_chunk_table_and_ci_array(boot: bytes, blob: bytes) -> None:
    rec0 = ChunkInfo.unpack(boot, 16384)
    assert rec0.index == 1 and rec0.digest.hex().startswith("812465bc")
    assert rec0.pack() == boot[16384:16464]
    cis = unpack_ci_array(blob[8314:8346], 2, v2=False)
    assert cis == [ChunkMeta(0, 16931, 0, 4828, True), ChunkMeta(20480, 13400, 4828, 2974, True)]
    assert b"".join(c.pack_v1() for c in cis) == blob[8314:8346]
    assert struct.unpack("<QQ", cis[0].pack_v1()) == (0x0422_2000_0000_0000, 0x012D_B000_0000_0000)
    hdr = BlobMetaHeader.unpack(blob[8346:12442])
    assert (hdr.features, hdr.ci_entries, hdr.ci_offset) == (0x7000_0021, 2, 8314)
    assert hdr.pack() == blob[8346:12442]


def test_toc_and_tar_headers(blob: bytes) -> None:
    toc = parse_toc(blob[-1024:])
    assert [e.name for e in toc] == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest"]
    assert toc[3].compressed_offset == 12954 and toc[3].compressed_size == 64
    assert hashlib.sha256(blob[12954:13018]).digest() == toc[3].digest
    assert tar_header("image.blob", 7802) == blob[7802:8314]
    assert parse_tar_header(blob[7802:8314]) == ("image.blob", 7802)
    assert tar_header("rafs.blob.toc", 512) == blob[-512:]
    assert (
        hashlib.sha256(blob[-1024:]).hexdigest()
        == "cfc89ed0739aef4eb1bf0904f0dfdb1c857134eca7319465baae95a99b84acde"
    )
    # blob id = sha256 of the blob without its chunk digest array (spec §6.9)
    assert hashlib.sha256(blob[:12954] + blob[13018:]).hexdigest() == V6_BLOB_ID
    with pytest.raises(FormatError, match="GNU"):
        parse_tar_header(b"\0" * 257 + b"ustar\x0000" + b"\0" * 247)


def test_reader_walk(boot: bytes) -> None:
    sb = open_bootstrap(boot)
    assert sb.version == 6 and sb.root_ino == 128
    assert [(p, i) for p, i in walk(sb)] == [(b"/", 128), (b"/lib.rs", 133), (b"/sync_io.rs", 136)]
    assert sb.lookup(128, b"sync_io.rs") == 136 and sb.lookup(128, b"nope") is None
    refs = sb.chunks(136)
    assert refs[0].compressed_offset == 4828 and refs[0].uncompressed_size == 13400


def test_xattr_and_rdev_roundtrip() -> None:
    x = {
        b"user.a": b"1",
        b"trusted.t": b"x" * 70,
        b"security.capability": b"\1\0\0\2" + b"\0" * 16,
        b"system.posix_acl_access": b"\2\0\0\0",
    }
    raw = pack_xattrs(x)
    assert len(raw) % 4 == 0 and unpack_xattrs(raw, 0, len(raw)) == x
    import os

    for major, minor in ((1, 3), (7, 0), (259, 70000)):
        dev = os.makedev(major, minor)
        assert erofs_to_rdev(rdev_to_erofs(dev)) == dev
    assert rdev_to_erofs(os.makedev(1, 3)) == 0x103
    with pytest.raises(FormatError):
        pack_xattrs({b"weird.name": b""})


def test_dirents_span_blocks() -> None:
    names = sorted([b".", b".."] + [b"f%05d" % i + b"x" * 40 for i in range(300)])
    blocks, size = pack_dir_blocks(Dirent(i + 1, 1, n) for i, n in enumerate(names))
    assert len(blocks) > 1 and all(len(b) == 4096 for b in blocks[:-1])
    assert size == 4096 * (len(blocks) - 1) + len(blocks[-1])
    got = []
    for i, b in enumerate(blocks):
        used = len(b) if i == len(blocks) - 1 else 4096
        got += [d.name for d in unpack_dir_block(b.ljust(4096, b"\0"), used)]
    assert got == names


def test_bad_bootstraps_rejected(boot: bytes) -> None:
    with pytest.raises(FormatError, match="not a RAFS bootstrap"):
        open_bootstrap(b"\0" * 8192)
    bad = bytearray(boot)
    bad[1024 + 80] = 0x1C  # feature_incompat
    with pytest.raises(FormatError, match="feature_incompat"):
        open_bootstrap(bytes(bad))
    with pytest.raises(FormatError):
        open_bootstrap(boot[:10000])


# -- an image of our own ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> OwnImage:
    return build_image(tmp_path_factory.mktemp("own-v6"))


def test_own_superblocks_repack_and_count_the_tree(own: OwnImage) -> None:
    boot = own.bootstrap.read_bytes()
    sb = SuperBlock.unpack(boot[1024:1152])
    assert sb.pack() == boot[1024:1152]
    ext = ExtSuperBlock.unpack(boot[1152:1408])
    assert ext.pack() == boot[1152:1408]
    assert ext.chunk_size == own.chunk_size and sb.extra_devices == 1
    slot = DeviceSlot.unpack(boot, 1408)
    assert slot.blob_id == own.blob_id and slot.pack() == boot[1408:1536]
    # inos counts tree nodes, hard links included, as upstream's builder does
    assert sb.inos == len(own.paths())
    assert open_bootstrap(boot).root_ino == sb.root_nid


def test_own_blob_table_ci_array_and_toc_describe_the_blob(own: OwnImage) -> None:
    boot, blob = own.bootstrap.read_bytes(), own.blob_path.read_bytes()
    ext = ExtSuperBlock.unpack(boot[1152:1408])
    b = BlobInfo.unpack(boot, ext.blob_table_offset)
    assert b.pack() == boot[ext.blob_table_offset : ext.blob_table_offset + ext.blob_table_size]
    b.validate(0, own.chunk_size)
    assert (b.blob_id, b.compressor, b.compressed_size) == (own.blob_id, own.compressor, len(blob))
    assert b.features & BlobFeatures.HAS_TOC and b.features & BlobFeatures.INLINED_CHUNK_DIGEST
    cs = own.chunk_size
    distinct = {d[i : i + cs] for d in own.files.values() for i in range(0, len(d), cs)}
    assert b.chunk_count == len(distinct)
    # the CI array (compressed with ci_compressor) and its header after it
    stored = blob[b.ci_offset : b.ci_offset + b.ci_compressed_size]
    ci = Compressor(b.ci_compressor).decompress(stored, b.ci_uncompressed_size)
    cis = unpack_ci_array(ci, b.chunk_count, v2=False)
    assert b"".join(c.pack_v1() for c in cis) == ci
    hdr_at = b.ci_offset + b.ci_compressed_size
    hdr = BlobMetaHeader.unpack(blob[hdr_at : hdr_at + 4096])
    assert hdr.pack() == blob[hdr_at : hdr_at + 4096]
    assert (hdr.features, hdr.ci_entries, hdr.ci_offset) == (b.features, b.chunk_count, b.ci_offset)
    # every chunk decompresses to a distinct piece of the source, 4 KiB aligned, back to back
    data = [
        Compressor(b.compressor if c.compressed else 0).decompress(
            blob[c.compressed_offset : c.compressed_offset + c.compressed_size],
            c.uncompressed_size,
        )
        for c in cis
    ]
    assert set(data) == distinct
    assert [c.uncompressed_offset % 4096 for c in cis] == [0] * len(cis)
    assert [c.compressed_offset for c in cis[1:]] == [
        c.compressed_offset + c.compressed_size for c in cis[:-1]
    ]
    # the ToC names each section; the tar header of the data sits right after it
    toc = {e.name: e for e in parse_toc(blob[-b.blob_toc_size :])}
    assert list(toc) == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest"]
    end = cis[-1].compressed_offset + cis[-1].compressed_size
    assert toc["image.blob"].compressed_size == end
    assert parse_tar_header(blob[end : end + 512]) == ("image.blob", end)
    assert toc["blob.meta"].compressed_offset == b.ci_offset
    assert hashlib.sha256(blob[-b.blob_toc_size :]).digest() == b.blob_toc_digest
    # each section's sha256 (spec 6.8): image.blob's covers its tar header too, blob.meta's
    # is of the uncompressed CI array
    assert hashlib.sha256(blob[: end + 512]).digest() == toc.pop("image.blob").digest
    assert hashlib.sha256(ci).digest() == toc.pop("blob.meta").digest
    for e in toc.values():
        section = blob[e.compressed_offset : e.compressed_offset + e.compressed_size]
        assert hashlib.sha256(section).digest() == e.digest, e.name
    # blob id = sha256 of the blob without its chunk digest array (spec §6.9)
    dig = toc["blob.digest"]
    off, size = dig.compressed_offset, dig.compressed_size
    assert hashlib.sha256(blob[:off] + blob[off + size :]).hexdigest() == own.blob_id


def test_own_chunk_table_matches_the_ci_array(own: OwnImage) -> None:
    boot, blob = own.bootstrap.read_bytes(), own.blob_path.read_bytes()
    ext = ExtSuperBlock.unpack(boot[1152:1408])
    b = BlobInfo.unpack(boot, ext.blob_table_offset)
    n = ext.chunk_table_size // ChunkInfo.STRUCT.size
    assert n == b.chunk_count
    recs = [ChunkInfo.unpack(boot, ext.chunk_table_offset + i * 80) for i in range(n)]
    assert (
        b"".join(r.pack() for r in recs)
        == boot[ext.chunk_table_offset : ext.chunk_table_offset + ext.chunk_table_size]
    )
    ci = Compressor(b.ci_compressor).decompress(
        blob[b.ci_offset : b.ci_offset + b.ci_compressed_size], b.ci_uncompressed_size
    )
    cis = unpack_ci_array(ci, n, v2=False)
    assert sorted(r.index for r in recs) == list(range(n))
    for r in recs:
        c = cis[r.index]
        assert (r.compressed_offset, r.compressed_size) == (c.compressed_offset, c.compressed_size)
        assert (r.uncompressed_offset, r.uncompressed_size) == (
            c.uncompressed_offset,
            c.uncompressed_size,
        )
        raw = Compressor(b.compressor if c.compressed else 0).decompress(
            blob[c.compressed_offset : c.compressed_offset + c.compressed_size],
            c.uncompressed_size,
        )
        assert own.digester.digest(raw) == r.digest


def test_own_inodes_and_dirents_repack(own: OwnImage) -> None:
    boot = own.bootstrap.read_bytes()
    sb = open_bootstrap(boot)
    meta = SuperBlock.unpack(boot[1024:1152]).meta_blkaddr * 4096
    entries = dict(walk(sb))
    assert sorted(entries) == own.paths()
    for path, nid in entries.items():
        off = meta + nid * 32
        ino = Inode.unpack(boot, off)
        assert ino.pack() == boot[off : off + ino.inode_size], path
        if path == b"/":
            continue
        m = own.member(path)
        assert (ino.uid, ino.gid, ino.mtime, stat.S_IMODE(ino.mode)) == (
            m.uid,
            m.gid,
            m.mtime,
            m.mode if m.mode is not None else stat.S_IMODE(ino.mode),
        ), path
        if m.kind == "file":
            assert stat.S_ISREG(ino.mode) and ino.size == len(m.data)
        if m.kind in ("chr", "blk"):
            assert erofs_to_rdev(ino.i_u) == os.makedev(m.devmajor, m.devminor)
        if stat.S_ISDIR(ino.mode):
            assert ino.layout == 2 and ino.size < 4096  # small dirs: one inline tail
            tail = off + ino.inode_size + ino.xattr_size
            raw = boot[tail : tail + ino.size]
            ents = unpack_dir_block(raw, ino.size)
            children = sorted(
                p.rsplit(b"/", 1)[1]
                for p in entries
                if p.startswith(path + b"/") and b"/" not in p[len(path) + 1 :]
            )
            assert [d.name for d in ents] == sorted([b".", b"..", *children])
            assert {d.name: d.nid for d in ents if d.name not in (b".", b"..")} == {
                c: entries[path + b"/" + c] for c in children
            }
            blocks, size = pack_dir_blocks(ents)
            assert size == ino.size and blocks == [raw]


def test_own_reader_walk_lookup_and_xattrs(own: OwnImage) -> None:
    sb = open_bootstrap(own.bootstrap.read_bytes())
    assert sb.version == 6 and sb.chunk_size == own.chunk_size
    entries = dict(walk(sb))
    assert sb.lookup(sb.root_ino, b"small") == entries[b"/small"] == entries[b"/hard"]
    assert sb.lookup(sb.root_ino, b"nope") is None
    assert sb.readlink(entries[b"/link"]) == b"/target/of/link"
    assert sb.xattrs(entries[b"/small"]) == {b"user.k": b"v"}
    assert sb.xattrs(entries[b"/dup"]) == {b"trusted.t": b"opaque-ish"}
    rep = sb.chunks(entries[b"/repeat.bin"])
    assert len({c.ci_index for c in rep}) == 2 and rep[0].ci_index == rep[1].ci_index
    assert [c.ci_index for c in sb.chunks(entries[b"/dup/a"])] == [
        c.ci_index for c in sb.chunks(entries[b"/dup/b"])
    ]


def test_own_bad_bootstraps_rejected(own: OwnImage) -> None:
    boot = own.bootstrap.read_bytes()
    bad = bytearray(boot)
    bad[1024 + 80] = 0x1C  # feature_incompat
    with pytest.raises(FormatError, match="feature_incompat"):
        open_bootstrap(bytes(bad))
    with pytest.raises(FormatError):
        open_bootstrap(boot[: len(boot) // 2])
