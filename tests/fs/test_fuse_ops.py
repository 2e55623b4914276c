"""The pyfuse3 adapter called directly (no mount): inode mapping, EROFS, errno mapping."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest
import trio

from nydus.format.rafs import open_bootstrap
from nydus.fs import FsOptions, RafsFs
from nydus.fuse import RafsOperations, mount_options
from nydus.storage import ChunkDevice, LocalFsBackend
from tests.golden import golden_path


@pytest.fixture
def ops() -> RafsOperations:
    sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
    dev = ChunkDevice(sb, LocalFsBackend(dir=str(golden_path("upstream", "v6", "blobs"))))
    return RafsOperations(RafsFs(sb, dev, FsOptions()), trio.CapacityLimiter(2), timeout=60)


def _errno(coro_fn, *args) -> int:
    async def run():
        await coro_fn(*args)

    with pytest.raises(pyfuse3.FUSEError) as exc:
        trio.run(run)
    return exc.value.errno


def test_root_is_node_one_but_reports_its_nid(ops):
    async def run():
        root = await ops.getattr(pyfuse3.ROOT_INODE)
        lib = await ops.lookup(pyfuse3.ROOT_INODE, b"lib.rs")
        return root, lib

    root, lib = trio.run(run)
    assert root.st_ino == 128 and root.st_mode == 0o40755
    assert lib.st_ino == 133 and lib.st_size == 16931
    assert lib.entry_timeout == 60 and lib.attr_timeout == 60
    assert lib.st_blocks == (16931 + 511) // 512
    assert lib.st_mtime_ns == 1676819553 * 10**9 + 628661334


def test_lookup_of_dotdot_maps_the_root_to_node_one(ops):
    async def run():
        return await ops.lookup(pyfuse3.ROOT_INODE, b"..")

    assert trio.run(run).st_ino == pyfuse3.ROOT_INODE


def test_open_read_release(ops):
    async def run():
        fi = await ops.open(133, os.O_RDONLY)
        data = await ops.read(fi.fh, 0, 40)
        await ops.release(fi.fh)
        return fi, data

    fi, data = trio.run(run)
    assert fi.fh == 133 and fi.keep_cache
    assert data == b"// Copyright (C) 2020 Alibaba Cloud. All"


def test_read_only_and_errnos(ops):
    assert _errno(ops.open, 133, os.O_WRONLY) == errno.EROFS
    assert _errno(ops.open, 133, os.O_RDWR) == errno.EROFS
    assert _errno(ops.mkdir, 1, b"d", 0o755, None) == errno.EROFS
    assert _errno(ops.setattr, 133, None, None, None, None) == errno.EROFS
    assert _errno(ops.access, 133, os.W_OK, None) == errno.EROFS
    # a missing name is a negative entry (st_ino 0) the kernel caches: the image never changes
    neg = trio.run(ops.lookup, pyfuse3.ROOT_INODE, b"missing")
    assert neg.st_ino == 0 and neg.entry_timeout > 0
    assert _errno(ops.lookup, 133, b"x") == errno.ENOTDIR
    assert _errno(ops.getxattr, 133, b"user.x") == errno.ENODATA
    assert _errno(ops.readlink, 133) == errno.EINVAL
    assert _errno(ops.read, 128, 0, 10) == errno.EISDIR


def test_statfs_and_options(ops):
    async def run():
        return await ops.statfs(None)

    st = trio.run(run)
    assert st.f_bsize == 4096 and st.f_blocks == 9 and st.f_files == 3 and st.f_namemax == 255
    opts = mount_options()
    assert {"default_permissions", "ro", "fsname=nydusfs"} <= opts
