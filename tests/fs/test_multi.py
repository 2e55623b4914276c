"""MultiFs: several RAFS instances under one pseudo root, inodes namespaced per instance,
detached instances answer ESTALE, readdir offsets stable while instances come and go."""

from __future__ import annotations

import errno
import stat

import pytest

from nydus.errors import NydusError
from nydus.fs.multi import ROOT_INO, SLOT_SHIFT, MultiFs
from tests.fs.test_rafsfs import _fs


def _errno(fn, *args) -> int:
    with pytest.raises(NydusError) as exc:
        fn(*args)
    return exc.value.errno


def _names(m: MultiFs, ino: int, offset: int = 0) -> list[bytes]:
    return [i.name for i in m.iter_dir(ino, offset)]


def test_instances_under_one_root() -> None:
    m = MultiFs()
    a, b = _fs("v6"), _fs("v5")
    m.add("/a", a)
    m.add("b", b)
    root = m.getattr(ROOT_INO)
    assert stat.S_ISDIR(root.mode) and root.nlink == 4
    assert _names(m, ROOT_INO) == [b".", b"..", b"a", b"b"]
    ra, rb = m.lookup(ROOT_INO, b"a"), m.lookup(ROOT_INO, b"b")
    assert ra.ino == (1 << SLOT_SHIFT) | a.root_ino and rb.ino >> SLOT_SHIFT == 2
    # the instance's own tree, inodes mapped, `..` of its root is the pseudo root
    inner = _names(m, ra.ino)
    assert inner == [i.name for i in a.iter_dir(a.root_ino)]
    dotdot = next(i for i in m.iter_dir(ra.ino) if i.name == b"..")
    assert dotdot.attr.ino == ROOT_INO and m.lookup(ra.ino, b"..").ino == ROOT_INO
    # a regular file reads the same bytes as through its own RafsFs
    item = next(i for i in a.iter_dir(a.root_ino) if stat.S_ISREG(i.attr.mode) and i.attr.size)
    mapped = m.lookup(ra.ino, item.name)
    assert mapped.ino == (1 << SLOT_SHIFT) | item.attr.ino and mapped.size == item.attr.size
    m.open(mapped.ino)
    assert m.read(mapped.ino, 0, 1 << 20) == a.read(item.attr.ino, 0, 1 << 20)
    m.release(mapped.ino)
    data_read = a.metrics.snapshot()["data_read"]
    assert isinstance(data_read, int) and data_read >= 2 * item.attr.size  # its own metrics
    assert m.statfs().files == 1 + a.statfs().files + b.statfs().files


def test_detach_errors_and_offsets() -> None:
    m = MultiFs()
    m.add("a", _fs("v6"))
    m.add("b", _fs("v6"))
    m.add("c", _fs("v6"))
    rb = m.lookup(ROOT_INO, b"b")
    after_a = [i for i in m.iter_dir(ROOT_INO) if i.name == b"a"][0].next_offset
    m.remove("/b")
    assert _errno(m.getattr, rb.ino) == errno.ESTALE  # a stale inode, never another file
    assert _errno(m.lookup, ROOT_INO, b"b") == errno.ENOENT
    assert _names(m, ROOT_INO, after_a) == [b"c"]  # resuming a listing skips nothing
    m.add("b", _fs("v6"))  # a new instance gets a new slot
    assert m.lookup(ROOT_INO, b"b").ino >> SLOT_SHIFT == 4
    assert _errno(m.add, "b", _fs("v6")) == errno.EEXIST
    for bad in ("", "/", "x/y", ".."):
        assert _errno(m.add, bad, _fs("v6")) == errno.EINVAL
    assert _errno(m.remove, "nope") == errno.ENOENT
    assert _errno(m.read, ROOT_INO, 0, 1) == errno.EISDIR
