"""`nydus.converter.unpack` (the reference tree of `nydusify check`) against the kernel's
overlayfs view of the same layers, and its path-safety and format edge cases."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from nydus.converter.unpack import IterReader, Unpacker, UnpackError, open_layer_stream
from tests.converter.images import rich_layers
from tests.helpers.env import OVERLAY_MOUNT, marked
from tests.helpers.layers import (
    CHR,
    GZIP_FAULTS,
    D,
    F,
    H,
    L,
    broken_gzip,
    layer_bytes,
    opaque,
    overlay_view,
    whiteout,
    write_layer,
)
from tests.helpers.snapshot import compare_trees, snapshot_tree


def _unpack(layers: list[bytes], dest: Path, pieces: int = 0) -> Unpacker:
    u = Unpacker(dest)
    for i, data in enumerate(layers):
        if pieces:  # as a registry stream: many small pieces
            reader = IterReader(data[j : j + pieces] for j in range(0, len(data), pieces))
            u.apply_layer(open_layer_stream(reader), f"layer {i}")
        else:
            u.apply_layer(open_layer_stream(io.BytesIO(data)), f"layer {i}")
    u.finish()
    return u


@marked(*OVERLAY_MOUNT)
def test_rich_layers_equal_the_overlayfs_view(tmp_path):
    """Whiteouts, opaque dirs (marker before and after same-layer siblings), hard links,
    symlinks, devices, FIFOs, xattrs, ids and modes: the unpacked tree is the tree the kernel
    shows for the same layer stack."""
    layers = rich_layers()
    tars = [write_layer(tmp_path / f"l{i}.tar", m, compress="gzip") for i, m in enumerate(layers)]
    u = _unpack([t.read_bytes() for t in tars], tmp_path / "ours", pieces=7000)
    assert u.stats.layers == 4 and u.stats.skipped_devices == []
    with overlay_view(tars, tmp_path / "overlay") as view:
        diffs = compare_trees(
            snapshot_tree(view),
            snapshot_tree(tmp_path / "ours"),
            ignore_fields={"mtime_ns"},
            ignore_xattrs=("trusted.overlay.*",),
        )
    assert diffs == []
    ours = tmp_path / "ours"
    # spot checks of the rules, so that a wrong oracle cannot pass silently
    assert not (ours / "etc/hosts").exists() and not (ours / "opt").exists()
    assert sorted(os.listdir(ours / "var/cache")) == ["kept-after-marker", "kept-before-marker"]
    assert not (ours / "home/user").exists()
    assert os.stat(ours / "srv/data.bin").st_ino == os.stat(ours / "srv/data.link").st_ino
    assert os.getxattr(ours / "srv/data.bin", "user.origin") == b"layer4"
    assert os.getxattr(ours / "etc/motd", "user.lang") == b"en"
    assert stat.S_ISCHR(os.lstat(ours / "dev/null").st_mode)
    assert os.readlink(ours / "etc/hostname") == "/proc/sys/kernel/hostname"
    assert os.stat(ours / "usr/bin/ping").st_mode & 0o7777 == 0o4755


@pytest.mark.root("unpacked layers keep their owners")
def test_zstd_layer_stream(tmp_path):
    tar = layer_bytes([D("a"), F("a/b", b"zstd data\n", xattrs={"user.k": b"v"})])
    z = zstandard.ZstdCompressor().compress(tar)
    _unpack([z], tmp_path / "root")
    assert (tmp_path / "root/a/b").read_bytes() == b"zstd data\n"
    assert os.getxattr(tmp_path / "root/a/b", "user.k") == b"v"


@pytest.mark.root("unpacked layers keep their owners")
def test_never_writes_through_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    lower = layer_bytes([L("evil", str(outside)), L("rel", "../outside")])
    upper = layer_bytes([F("evil/planted", b"x"), whiteout("rel/victim"), whiteout("evil/victim")])
    _unpack([lower, upper], tmp_path / "root")
    assert (outside / "victim").read_bytes() == b"keep me"
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (tmp_path / "root/evil").is_dir() and not (tmp_path / "root/evil").is_symlink()
    assert (tmp_path / "root/evil/planted").read_bytes() == b"x"


def test_dotdot_is_refused(tmp_path):
    bad = layer_bytes([F("a/../../escape", b"x")])
    with pytest.raises(UnpackError, match=r"layer 0: tar entry 'a/\.\./\.\./escape' escapes"):
        _unpack([bad], tmp_path / "root")
    assert not (tmp_path / "escape").exists()


@pytest.mark.root("unpacked layers keep their owners")
@pytest.mark.parametrize("entry", [".wh..", "sub/.wh..", ".wh.", "sub/.wh.", "sub/.wh.."])
def test_whiteout_of_dot_dot_or_nothing_is_refused(tmp_path, entry):
    """`.wh..` once became rmtree(<root>/..) and `.wh.` rmtree of its own directory."""
    keep = tmp_path / "beside-root"
    keep.write_bytes(b"keep me")
    root = tmp_path / "root"
    lower = layer_bytes([D("sub"), F("sub/file", b"lower")])
    with pytest.raises(UnpackError, match=r"layer 1: tar entry .*invalid whiteout entry"):
        _unpack([lower, layer_bytes([F(entry)])], root)
    assert keep.read_bytes() == b"keep me"
    assert (root / "sub/file").read_bytes() == b"lower"


@pytest.mark.root("unpacked layers keep their owners")
@pytest.mark.parametrize("fault", GZIP_FAULTS)
def test_broken_gzip_layer_is_refused(tmp_path, fault):
    """`nydusify check` once unpacked a gzip layer with a wrong CRC (tarfile never checks
    it): the layer is read to its end and its trailer checked."""
    tar = layer_bytes([F("big", b"a" * 65536 + bytes(range(256)) * 256)])
    with pytest.raises(UnpackError, match=r"layer 0: .*(gzip|checksum|trailing)"):
        _unpack([broken_gzip(tar, fault)], tmp_path / "root", pieces=65536)


@pytest.mark.root("unpacked layers keep their owners")
def test_hard_link_to_a_lower_layer_and_type_replacements(tmp_path):
    lower = layer_bytes(
        [
            D("d"),
            F("d/f", b"lower"),
            F("file-then-dir", b"1"),
            D("dir-then-file"),
            F("dir-then-file/x", b"2"),
        ]
    )
    upper = layer_bytes(
        [
            H("d/g", "d/f"),
            D("file-then-dir"),
            F("file-then-dir/y", b"3"),
            F("dir-then-file", b"4"),
            opaque("d"),
        ]
    )
    _unpack([lower, upper], tmp_path / "root")
    root = tmp_path / "root"
    # opaque "d" keeps only this layer's entry g, a link to the (removed) lower d/f inode
    assert os.listdir(root / "d") == ["g"] and (root / "d/g").read_bytes() == b"lower"
    assert (root / "file-then-dir/y").read_bytes() == b"3"
    assert (root / "dir-then-file").read_bytes() == b"4"


@pytest.mark.root("unpacked layers keep their owners")
def test_device_nodes_are_skipped_only_when_mknod_fails(tmp_path, monkeypatch):
    data = layer_bytes([CHR("dev/null", 1, 3, mode=0o666), F("dev/keep", b"k")])
    u = _unpack([data], tmp_path / "made")
    assert os.major(os.lstat(tmp_path / "made/dev/null").st_rdev) == 1
    assert u.stats.skipped_devices == []

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refuse)
    u = _unpack([data], tmp_path / "skipped")
    assert u.stats.skipped_devices == ["/dev/null"]
    assert sorted(os.listdir(tmp_path / "skipped/dev")) == ["keep"]


def test_truncated_layer_is_one_clear_error(tmp_path):
    data = layer_bytes([F("big", os.urandom(100_000))])[:50_000]
    with pytest.raises(UnpackError, match="layer 0: corrupt or truncated tar"):
        _unpack([data], tmp_path / "root")


@pytest.mark.root("unpacked layers keep their owners")
def test_whiteout_after_the_same_layers_directory_clears_only_lower_entries(tmp_path):
    lower = layer_bytes([D("opt"), F("opt/old", b"lower"), D("opt/sub"), F("opt/sub/deep", b"d")])
    upper = layer_bytes([D("opt"), F("opt/new", b"upper"), whiteout("opt")])
    _unpack([lower, upper], tmp_path / "root")
    assert os.listdir(tmp_path / "root/opt") == ["new"]
