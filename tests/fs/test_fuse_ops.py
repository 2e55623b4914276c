"""The RAFS adapter of the FUSE server called directly (no mount): node ids, what each
operation answers, errnos, cache flags; over upstream's golden v6 image and over one of our
own (tests/image_factory.py)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import pytest

from nydus.errors import NydusError
from nydus.format.rafs import open_bootstrap
from nydus.format.v6 import SuperBlock
from nydus.fs import FsOptions, RafsFs
from nydus.fuse import RafsOperations, mount_options
from nydus.fuse.protocol import OpenFlags
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
    ops = RafsOperations(RafsFs(sb, dev, FsOptions()), timeout=60)
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


def _errno(fn, *args) -> int:
    with pytest.raises((NydusError, OSError)) as exc:
        fn(*args)
    err = exc.value
    assert isinstance(err, (NydusError, OSError)) and err.errno is not None
    return err.errno


def test_root_is_node_one_but_reports_its_nid(case):
    ops = case.ops
    root = ops.getattr(1)
    node, f = ops.lookup(1, case.name)
    assert root.ino == case.root_nid and root.mode == 0o40755
    assert node == case.nid and f.ino == case.nid and f.size == case.size
    assert ops.entry_timeout == 60 and ops.attr_timeout == 60
    assert f.mtime * 10**9 + f.mtime_nsec == case.mtime_ns


def test_lookup_of_dotdot_maps_the_root_to_node_one(case):
    node, attr = case.ops.lookup(1, b"..")
    assert node == 1 and attr.ino == case.root_nid


def test_open_read_release_with_cache_flags(case):
    ops = case.ops
    fh, flags = ops.open(case.nid, os.O_RDONLY)
    assert fh == case.nid and flags & OpenFlags.KEEP_CACHE
    assert ops.read(fh, 0, 40) == case.head
    ops.release(fh)
    fh, flags = ops.opendir(1)
    assert fh == case.root_nid and flags & OpenFlags.CACHE_DIR and flags & OpenFlags.KEEP_CACHE


def test_readdir_records_and_offsets(case):
    recs = list(case.ops.readdir(case.root_nid, 0, True))
    names = [r[0] for r in recs]
    assert names[:2] == [b".", b".."] and case.name in names
    assert [r[3] for r in recs] == list(range(1, len(recs) + 1))
    assert recs[0][1] == 1  # "." of the root is node 1
    assert [r[0] for r in case.ops.readdir(case.root_nid, 2, False)] == names[2:]


def test_errnos(case):
    ops, f, root = case.ops, case.nid, case.ops.fs.root_ino
    assert ops.lookup(1, b"missing") is None  # a negative entry the kernel caches
    assert _errno(ops.lookup, f, b"x") == errno.ENOTDIR
    assert _errno(ops.getxattr, f, b"user.x") == errno.ENODATA
    assert _errno(ops.readlink, f) == errno.EINVAL
    assert _errno(ops.read, root, 0, 10) == errno.EISDIR
    assert _errno(ops.open, 1, os.O_RDONLY) == errno.EISDIR


def test_statfs_and_options(case):
    st = case.ops.statfs()
    assert (st.bsize, st.blocks, st.files, st.namemax) == (4096, case.blocks, case.files, 255)
    opts = mount_options()
    assert {"default_permissions", "ro", "fsname=nydusfs"} <= opts
