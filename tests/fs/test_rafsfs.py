"""RafsFs without FUSE: lookup, getattr, readdir offsets, read, readlink, xattrs, statfs,
errors with errnos, uid/gid policy and metrics.

Over upstream's golden images (exact values) and, for the same behaviours, over an image of our
own (tests/image_factory.py) checked against its source tree: the latter need no golden set."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from nydus.errors import NotFound, NydusError
from nydus.format.rafs import open_bootstrap
from nydus.fs import FOPS, FsError, FsOptions, RafsFs
from nydus.storage import ChunkDevice, LocalFsBackend
from tests.golden import golden_path
from tests.image_factory import OwnImage, build_image

GOLDEN = pytest.mark.golden


def _fs(kind: str = "v6", **opts) -> RafsFs:
    if kind == "v6":
        sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
        blobs = golden_path("upstream", "v6", "blobs")
    else:
        sb = open_bootstrap(
            golden_path("upstream", "v5", "sha256-nocompress-repeatable").read_bytes()
        )
        blobs = golden_path("upstream", "v5", "blobs")
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(blobs)), validate=True)
    return RafsFs(sb, dev, FsOptions(**opts), uid=4242, gid=4343)


def _own_fs(img: OwnImage, **opts) -> RafsFs:
    sb = img.open()
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(img.blob_dir)), validate=True)
    return RafsFs(sb, dev, FsOptions(**opts), uid=4242, gid=4343)


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> OwnImage:
    return build_image(tmp_path_factory.mktemp("own"))


@pytest.fixture(scope="module")
def own_repeatable(tmp_path_factory) -> OwnImage:
    """Built with --repeatable: no explicit uid/gid, like the golden v5 images."""
    return build_image(tmp_path_factory.mktemp("own-repeatable"), repeatable=True)


@pytest.fixture(params=[pytest.param("golden", marks=GOLDEN), "own"])
def case(request) -> tuple[RafsFs, int]:
    """(fs with file metrics on, a regular file of more than 4196 bytes) of each v6 image."""
    if request.param == "golden":
        return _fs("v6", iostats_files=True, latest_read_files=True), 133
    fs = _own_fs(request.getfixturevalue("own"), iostats_files=True, latest_read_files=True)
    return fs, fs.resolve("/text.txt")


def _err(fn, *args) -> int:
    with pytest.raises(NydusError) as exc:
        fn(*args)
    return exc.value.errno


@GOLDEN
def test_v6_lookup_getattr_read():
    fs = _fs()
    assert fs.root_ino == 128
    lib = fs.lookup(128, b"lib.rs")
    assert (lib.ino, lib.size, lib.mode, lib.nlink) == (133, 16931, 0o100644, 1)
    assert (lib.uid, lib.gid) == (0, 0)  # EXPLICIT_UID_GID: on-disk ids
    assert fs.getattr(136).size == 13400
    assert (
        hashlib.sha256(fs.read(133, 0, 1 << 20)).hexdigest()
        == "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"
    )
    assert fs.read(133, 16930, 100) == b"\n"
    assert fs.read(133, 16931, 100) == b""
    assert fs.read(133, 5, 0) == b""
    assert fs.lookup(128, b".").ino == 128 and fs.lookup(128, b"..").ino == 128
    assert fs.resolve("/sync_io.rs") == 136


def test_own_lookup_getattr_read(own):
    fs = _own_fs(own)
    for path in own.paths()[1:]:
        ino = fs.resolve(path)
        a, m = fs.getattr(ino), own.member(path)
        assert (a.uid, a.gid, a.mtime) == (m.uid, m.gid, m.mtime), path  # explicit ids
        if m.mode is not None:
            assert a.mode & 0o7777 == m.mode, path
        if path in own.files:
            data = own.files[path]
            assert a.is_reg and a.size == len(data) and a.nlink == (2 if m.name == "small" else 1)
            assert fs.read(ino, 0, 1 << 20) == data, path
            assert fs.read(ino, 100, 3000) == data[100:3100]
            assert fs.read(ino, len(data), 10) == b"" and fs.read(ino, 5, 0) == b""
    root = fs.root_ino
    assert fs.lookup(root, b".").ino == root and fs.lookup(root, b"..").ino == root
    assert fs.lookup(root, b"hard").ino == fs.resolve("/small")


def test_errors_carry_errnos(case):
    fs, f = case
    root = fs.root_ino
    assert _err(fs.lookup, root, b"missing") == errno.ENOENT
    with pytest.raises(NotFound):
        fs.lookup(root, b"missing")
    assert _err(fs.lookup, f, b"x") == errno.ENOTDIR
    assert _err(fs.lookup, root, b"x" * 256) == errno.ENAMETOOLONG
    assert _err(fs.readdir, f) == errno.ENOTDIR
    assert _err(fs.read, root, 0, 10) == errno.EISDIR
    assert _err(fs.open, root) == errno.EISDIR
    assert _err(fs.readlink, f) == errno.EINVAL
    assert _err(fs.getxattr, f, b"user.x") == errno.ENODATA
    assert _err(fs.getattr, 999_999) in (errno.EIO, errno.EINVAL)


@pytest.mark.parametrize(
    ("kind", "dirpath"),
    [pytest.param("golden", "/normal-file-test/holefiles", marks=GOLDEN), ("own", "/dir")],
)
def test_readdir_offsets_are_stable(kind, dirpath, request):
    fs = _fs("v5") if kind == "golden" else _own_fs(request.getfixturevalue("own"))
    d = fs.resolve(dirpath)
    full = fs.readdir(d)
    names = [i.name for i in full]
    assert names[:2] == [b".", b".."]
    assert names[2:] == sorted(names[2:]) and len(names) == 2 + 10
    assert [i.next_offset for i in full] == list(range(1, len(full) + 1))
    assert full[1].attr.ino == fs.resolve(dirpath.rsplit("/", 1)[0] or "/")
    # resuming at any offset continues exactly after the entry that produced it
    for k in range(len(full)):
        assert [i.name for i in fs.readdir(d, full[k].next_offset)] == names[k + 1 :]
    assert [i.name for i in fs.readdir(d, 0, limit=3)] == names[:3]
    assert fs.readdir(d, len(full)) == []
    root = fs.readdir(fs.root_ino)
    assert root[1].attr.ino == fs.root_ino  # the root's parent is itself


@GOLDEN
def test_uid_gid_policy_without_explicit_ids():
    fs = _fs("v5")
    a = fs.getattr(fs.resolve("/hardlink-test/foo"))
    assert (a.uid, a.gid) == (4242, 4343)
    assert (a.ino, a.nlink) == (5, 3)
    default = RafsFs(fs.sb, None)
    assert default.getattr(1).uid == os.geteuid()


def test_own_uid_gid_policy_without_explicit_ids(own_repeatable):
    fs = _own_fs(own_repeatable)
    a = fs.getattr(fs.resolve("/small"))  # 1000:1001 in the source, not kept by --repeatable
    assert (a.uid, a.gid, a.nlink) == (4242, 4343, 2)
    default = RafsFs(fs.sb, None)
    assert (default.getattr(fs.root_ino).uid, default.getattr(fs.root_ino).gid) == (
        os.geteuid(),
        os.getegid(),
    )


def test_xattrs_follow_enable_xattr():
    from nydus.format.rafs import Attr

    class WithXattrs:
        """A superblock stub with one xattr on the root."""

        version, flags, chunk_size, root_ino, inode_count, blobs = 6, 0x10, 4096, 1, 1, []

        def attr(self, ino):
            return Attr(1, 0o40755, 0, 0, 0, 0, 0, 2)

        def xattrs(self, ino):
            return {b"user.k": b"v", b"trusted.t": b""}

    on = RafsFs(WithXattrs(), None, FsOptions(enable_xattr=True))
    assert on.listxattr(1) == [b"trusted.t", b"user.k"]
    assert on.getxattr(1, b"user.k") == b"v"
    assert on.getxattr(1, b"trusted.t") == b""
    off = RafsFs(WithXattrs(), None)
    assert off.listxattr(1) == []
    assert _err(off.getxattr, 1, b"user.k") == errno.ENODATA


@GOLDEN
def test_symlinks_and_statfs():
    fs = _fs("v5")
    link = fs.resolve("/symlink-test/root-2")
    assert fs.readlink(link) == b"/foobar"
    assert fs.getattr(link).is_symlink
    st = fs.statfs()
    assert (st.bsize, st.blocks, st.files, st.namemax) == (4096, (3508766 + 4095) // 4096, 51, 255)


def test_own_symlinks_and_statfs(own):
    fs = _own_fs(own)
    link = fs.resolve("/link")
    assert fs.readlink(link) == b"/target/of/link"
    assert fs.getattr(link).is_symlink
    st = fs.statfs()
    cs = own.chunk_size
    chunks = {d[i : i + cs] for d in own.files.values() for i in range(0, len(d), cs)}
    blocks = sum((len(c) + 4095) // 4096 for c in chunks)  # chunks are 4 KiB aligned
    assert (st.bsize, st.blocks, st.files, st.namemax) == (4096, blocks, len(own.paths()), 255)


def test_read_without_device_is_eio(case):
    fs, f = case
    bare = RafsFs(fs.sb, None)
    assert _err(bare.read, f, 0, 10) == errno.EIO
    assert bare.read(f, 1 << 30, 10) == b""  # beyond EOF needs no data


def test_metrics_counts(case):
    fs, f = case
    fs.open(f)
    fs.read(f, 0, 4096)
    fs.read(f, 4096, 100)
    fs.release(f)
    with pytest.raises(NydusError):
        fs.lookup(fs.root_ino, b"nope")
    m = fs.metrics.snapshot()
    assert len(m["fop_hits"]) == len(FOPS) == 15
    assert m["fop_hits"][FOPS.index("read")] == 2
    assert m["fop_hits"][FOPS.index("open")] == 1
    assert m["fop_errors"][FOPS.index("lookup")] == 1
    assert m["data_read"] == 4196
    assert m["block_count_read"][2] == 1 and m["block_count_read"][0] == 1
    assert m["nr_opens"] == 0
    assert sum(m["read_latency_dist"]) == 2
    files = fs.metrics.files_snapshot()
    assert files[str(f)]["data_read"] == 4196 and files[str(f)]["total_fops"] == 4
    assert fs.metrics.take_latest_read_files() == [f]
    assert fs.metrics.take_latest_read_files() == []
    assert fs.metrics.inflight() == []


def test_fserror_is_nydus_error():
    e = FsError(errno.EROFS, "read-only")
    assert isinstance(e, NydusError) and e.errno == errno.EROFS


def test_inflight_lists_running_operations():
    from nydus.fs.metrics import FsMetrics

    m = FsMetrics()
    with m.op("read", 133):
        items = m.inflight()
        assert len(items) == 1
        assert items[0]["inode"] == 133 and items[0]["opcode"] == 15  # FUSE_READ
        assert items[0]["unique"] >= 1 and items[0]["timestamp_secs"] > 0
    assert m.inflight() == []
