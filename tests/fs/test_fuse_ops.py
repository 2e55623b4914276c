"""The pyfuse3 adapter called directly (no mount): inode mapping, EROFS, errno mapping; over
upstream's golden v6 image and over one of our own (tests/image_factory.py)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import pyfuse3
import pytest
import trio

from nydus.format.rafs import open_bootstrap
from nydus.format.v6 import SuperBlock
from nydus.fs import FsOptions, RafsFs
from nydus.fuse import RafsOperations, mount_options
from nydus.storage import ChunkDevice, LocalFsBackend
from tests.golden import golden_path
from tests.image_factory import build_image


@dataclass
class Case:
    ops: RafsOperations
    name: bytes  # a regular file in the root directory
    nid: int
    size: int
    mtime_ns: int
    head: bytes  # its first 40 bytes
    blocks: int  # statfs
    files: int
    root_nid: int


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("own"))


@pytest.fixture(params=[pytest.param("golden", marks=pytest.mark.golden), "own"])
def case(request) -> Case:
    if request.param == "golden":
        boot, blobs = (
            golden_path("upstream", "v6", "bootstrap"),
            golden_path("upstream", "v6", "blobs"),
        )
    else:
        img = request.getfixturevalue("own")
        boot, blobs = img.bootstrap, img.blob_dir
    sb = open_bootstrap(boot.read_bytes())
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(blobs)))
    ops = RafsOperations(RafsFs(sb, dev, FsOptions()), trio.CapacityLimiter(2), timeout=60)
    if request.param == "golden":
        head = b"// Copyright (C) 2020 Alibaba Cloud. All"
        return Case(ops, b"lib.rs", 133, 16931, 1676819553 * 10**9 + 628661334, head, 9, 3, 128)
    m = img.member(b"/text.txt")
    blocks = sum(b.uncompressed_size // 4096 for b in sb.blobs)
    return Case(
        ops,
        b"text.txt",
        img.ino(sb, b"/text.txt"),
        len(m.data),
        m.mtime * 10**9,
        m.data[:40],
        blocks,
        len(img.paths()),
        SuperBlock.unpack(boot.read_bytes()[1024:1152]).root_nid,
    )


def _errno(coro_fn, *args) -> int:
    async def run():
        await coro_fn(*args)

    with pytest.raises(pyfuse3.FUSEError) as exc:
        trio.run(run)
    return exc.value.errno


def test_root_is_node_one_but_reports_its_nid(case):
    ops = case.ops

    async def run():
        root = await ops.getattr(pyfuse3.ROOT_INODE)
        f = await ops.lookup(pyfuse3.ROOT_INODE, case.name)
        return root, f

    root, f = trio.run(run)
    assert root.st_ino == case.root_nid and root.st_mode == 0o40755
    assert f.st_ino == case.nid and f.st_size == case.size
    assert f.entry_timeout == 60 and f.attr_timeout == 60
    assert f.st_blocks == (case.size + 511) // 512
    assert f.st_mtime_ns == case.mtime_ns


def test_lookup_of_dotdot_maps_the_root_to_node_one(case):
    async def run():
        return await case.ops.lookup(pyfuse3.ROOT_INODE, b"..")

    assert trio.run(run).st_ino == pyfuse3.ROOT_INODE


def test_open_read_release(case):
    ops = case.ops

    async def run():
        fi = await ops.open(case.nid, os.O_RDONLY)
        data = await ops.read(fi.fh, 0, 40)
        await ops.release(fi.fh)
        return fi, data

    fi, data = trio.run(run)
    assert fi.fh == case.nid and fi.keep_cache
    assert data == case.head


def test_read_only_and_errnos(case):
    ops, f, root = case.ops, case.nid, case.ops.fs.root_ino
    assert _errno(ops.open, f, os.O_WRONLY) == errno.EROFS
    assert _errno(ops.open, f, os.O_RDWR) == errno.EROFS
    assert _errno(ops.mkdir, 1, b"d", 0o755, None) == errno.EROFS
    assert _errno(ops.setattr, f, None, None, None, None) == errno.EROFS
    assert _errno(ops.access, f, os.W_OK, None) == errno.EROFS
    # a missing name is a negative entry (st_ino 0) the kernel caches: the image never changes
    neg = trio.run(ops.lookup, pyfuse3.ROOT_INODE, b"missing")
    assert neg.st_ino == 0 and neg.entry_timeout > 0
    assert _errno(ops.lookup, f, b"x") == errno.ENOTDIR
    assert _errno(ops.getxattr, f, b"user.x") == errno.ENODATA
    assert _errno(ops.readlink, f) == errno.EINVAL
    assert _errno(ops.read, root, 0, 10) == errno.EISDIR


def test_statfs_and_options(case):
    async def run():
        return await case.ops.statfs(None)

    st = trio.run(run)
    assert (st.f_bsize, st.f_blocks, st.f_files, st.f_namemax) == (
        4096,
        case.blocks,
        case.files,
        255,
    )
    opts = mount_options()
    assert {"default_permissions", "ro", "fsname=nydusfs"} <= opts
