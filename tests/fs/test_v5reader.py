"""RafsV5Super over the golden v5 bootstraps (rafs-format §7, §13.2, §13.4)."""

from __future__ import annotations

import hashlib
import stat

import pytest

from nydus.errors import FormatError
from nydus.format.rafs import open_bootstrap, walk
from nydus.format.v5reader import RafsV5Super
from nydus.utils.compress import Compressor
from nydus.utils.digest import Digester
from tests.golden import golden_path

pytestmark = pytest.mark.golden  # upstream's images: no own equivalent

V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


@pytest.fixture(
    params=[
        ("sha256-nocompress-repeatable", 0x9, Digester.SHA256),
        ("blake3-lz4_block-non_repeatable", 0x5, Digester.BLAKE3),
    ],
    ids=["sha256", "blake3"],
)
def v5(request):
    name, flags, digester = request.param
    sb = open_bootstrap(golden_path("upstream", "v5", name).read_bytes())
    return sb, flags, digester


def test_superblock_and_blobs(v5):
    sb, flags, digester = v5
    assert isinstance(sb, RafsV5Super)
    assert sb.version == 5 and sb.flags == flags
    assert sb.chunk_size == 0x100000
    assert sb.compressor is Compressor.NONE and sb.digester is digester
    assert sb.inode_count == 51  # one short: the builder left the root out (§7.2)
    assert sb.sb.inode_table_entries == 54 and sb.sb.blob_table_size == 72
    assert sb.sb.extended_blob_table_offset == 8480
    assert len(sb.blobs) == 1
    b = sb.blobs[0]
    assert (b.blob_id, b.blob_index, b.chunk_count, b.features) == (V5_BLOB, 0, 23, 0)
    assert b.compressed_size == b.uncompressed_size == 3508766
    assert b.compressor == 0 and b.digester == int(digester)
    assert sb.prefetch_inos() == []


def test_tree_counts_and_inode_numbers(v5):
    sb, _, _ = v5
    entries = list(walk(sb))
    assert len(entries) == 54
    kinds = [stat.S_IFMT(sb.attr(i).mode) for _, i in entries]
    assert kinds.count(stat.S_IFDIR) == 24
    assert kinds.count(stat.S_IFREG) == 23
    assert kinds.count(stat.S_IFLNK) == 7
    inos = {i for _, i in entries}
    assert len(inos) == 52 and max(inos) == 54 and 6 not in inos and 9 not in inos
    paths = dict(entries)
    links = [b"/hardlink-test/foo", b"/hardlink-test/test.sh", b"/normal-file-test/test.sh"]
    assert {paths[p] for p in links} == {5}
    assert sb.attr(5).nlink == 3
    root = sb.attr(1)
    assert (root.mode, root.size, root.nlink, root.mtime) == (0o40755, 4096, 5, 0)
    assert sb.readlink(paths[b"/symlink-test/root-1"]) == b"/////////////////"
    assert sb.lookup(1, b"hardlink-test") == paths[b"/hardlink-test"]
    assert sb.lookup(1, b"nope") is None
    assert sb.parent(paths[b"/hardlink-test/foo"]) == paths[b"/hardlink-test"]
    assert sb.parent(1) == 1


def test_chunks_and_digests(v5):
    sb, _, digester = v5
    blob = (golden_path("upstream", "v5", "blobs") / V5_BLOB).read_bytes()
    paths = dict(walk(sb))
    foo = sb.chunks(paths[b"/hardlink-test/foo"])
    assert len(foo) == 1
    c = foo[0]
    assert (
        c.blob_index,
        c.ci_index,
        c.file_offset,
        c.compressed_offset,
        c.compressed_size,
        c.uncompressed_size,
        c.compressed,
    ) == (0, 0, 0, 0, 944, 944, False)
    expect = {
        Digester.SHA256: "fff49cf6925f933ae4e834b5d88d25ed06d40f3d70ff9b1916070596bf5649eb",
        Digester.BLAKE3: "1d6c6721690cb5399df84c95901afda43192092f6ebecc8c6a10058b460dceeb",
    }
    assert c.digest.hex() == expect[digester]
    # every chunk record checks against the blob with the image's digester
    for info in sb.chunk_table():
        data = blob[info.compressed_offset : info.compressed_offset + info.compressed_size]
        assert digester.digest(data) == info.digest
    assert len(sb.chunk_table()) == 23
    hole = sb.chunks(paths[b"/normal-file-test/holefiles/head-hole-1"])
    assert [r.ci_index for r in hole] == [13, 13, 14]
    assert [r.file_offset for r in hole] == [0, 1 << 20, 2 << 20]
    data = b"".join(
        blob[r.compressed_offset : r.compressed_offset + r.compressed_size] for r in hole
    )
    assert hashlib.md5(data).hexdigest() == "ea7ac8dc0ae3673040f3b1d816d972d7"


def test_legacy_layout_rejected():
    buf = golden_path("upstream", "v5-daemon", "bootstrap").read_bytes()
    with pytest.raises(FormatError, match="legacy pre-release inode layout"):
        open_bootstrap(buf)


@pytest.mark.parametrize("cut", [100, 8192, 8300, 8600])
def test_truncated_bootstrap_is_format_error(cut):
    buf = golden_path("upstream", "v5", "sha256-nocompress-repeatable").read_bytes()[:cut]
    with pytest.raises(FormatError):
        sb = open_bootstrap(buf)
        list(walk(sb))


def test_xattr_table_parsing():
    from nydus.format.v5 import unpack_v5_xattrs

    pairs = [(b"user.a", b"1"), (b"security.capability", b"\x01\x02")]
    body = b"".join((len(n) + 1 + len(v)).to_bytes(4, "little") + n + b"\0" + v for n, v in pairs)
    table = len(body).to_bytes(8, "little") + body + b"\0" * (-len(body) % 8)
    xattrs, used = unpack_v5_xattrs(table, 0)
    assert xattrs == dict(pairs)
    assert used == len(table)
