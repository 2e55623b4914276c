"""Hostile bootstraps: a bounded fuzz run (thousands of mutants of a small image of ours and of
the golden ones, in worker processes with per-case time and memory limits) where every case
ends in a NydusError or a clean walk, and `nydus-image check` refuses whatever the reader
refuses; then the defects found by hand, one test each."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nydus.builder.build import CreateOptions, create
from nydus.builder.check import check_bootstrap
from nydus.errors import FormatError, NydusError
from nydus.format.constants import DEVICE_TABLE_OFFSET, EROFS_SUPER_OFFSET, EXT_SUPER_OFFSET
from nydus.format.rafs import open_bootstrap, walk
from nydus.format.v6reader import RafsV6Super
from tests.format.bootstrap_fuzz import disagreements, exercise_reader, fuzz
from tests.golden import golden_path

NYDUS_IMAGE = str(Path(sys.executable).parent / "nydus-image")
CASES_PER_SOURCE = 750


def small_image(base: Path) -> bytes:
    """A bootstrap of ours with every record kind: nested directories, an inline and a
    block directory, files of one and several chunks, an empty file, a hard link, a symlink,
    a FIFO, xattrs, a long name."""
    src = base / "src"
    (src / "a/b/c").mkdir(parents=True)
    (src / "a/b/c/deep.txt").write_bytes(b"deep\n")
    (src / "empty").write_bytes(b"")
    (src / "three-chunks.bin").write_bytes(os.urandom(3 * 4096 + 5))
    (src / "small.txt").write_bytes(b"hello\n")
    os.link(src / "small.txt", src / "a/hard-link")
    os.symlink("../small.txt", src / "a/sym")
    os.mkfifo(src / "a/fifo")
    os.setxattr(src / "small.txt", "user.k", b"v" * 40)
    (src / ("n" * 255)).write_bytes(b"long name\n")
    many = src / "many"
    many.mkdir()
    for i in range(150):  # a directory over one block
        (many / f"entry-{i:03d}").write_bytes(b"")
    blobs = base / "blobs"
    blobs.mkdir()
    boot = base / "boot"
    create(
        CreateOptions(source=str(src), bootstrap=str(boot), blob_dir=str(blobs), chunk_size=0x1000)
    )
    return boot.read_bytes()


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> bytes:
    return small_image(tmp_path_factory.mktemp("fuzz-src"))


@pytest.mark.golden
def test_fuzzed_bootstraps_end_in_an_error_or_a_clean_walk_and_check_agrees(ours):
    sources = [
        ours,
        golden_path("upstream", "v6", "bootstrap").read_bytes(),
        golden_path("upstream", "v5", "sha256-nocompress-repeatable").read_bytes(),
        golden_path("upstream", "v5", "blake3-lz4_block-non_repeatable").read_bytes(),
    ]
    for s in sources:  # the unmutated sources are valid, or the run would prove little
        exercise_reader(s)
        check_bootstrap(open_bootstrap(s))
    results = fuzz(sources, CASES_PER_SOURCE)
    assert len(results) == len(sources) * CASES_PER_SOURCE
    assert disagreements(results) == []
    refused = sum(o.reader == "refused" for _s, _d, o in results)
    clean = sum(o.reader == "ok" for _s, _d, o in results)
    # both outcomes are common: the mutants reach the records, not only padding
    assert refused > len(results) // 10 and clean > len(results) // 10, (refused, clean)


# -- the defects found by hand -----------------------------------------------------------------


def _patch(buf: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def _nid(sb: RafsV6Super, path: bytes) -> int:
    return dict(walk(sb))[path]


def _refused(buf: bytes, needle: str) -> None:
    """The reader (everything nydusd asks of it) and check both refuse `buf` naming
    `needle`; `nydus-image check` says so in one ERROR line."""
    with pytest.raises(NydusError, match=needle):
        exercise_reader(buf)
    with pytest.raises(FormatError, match=needle):
        check_bootstrap(open_bootstrap(buf))


def _one_error_line(tmp_path: Path, buf: bytes, needle: str) -> None:
    p = tmp_path / "hostile.boot"
    p.write_bytes(buf)
    r = subprocess.run([NYDUS_IMAGE, "check", "-B", str(p)], capture_output=True, text=True)
    errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert r.returncode != 0 and len(errors) == 1 and needle in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_extra_devices_0xffff_is_refused(ours, tmp_path):
    """Once read past the buffer (struct.error) in check and in nydusd's reader."""
    buf = _patch(ours, EROFS_SUPER_OFFSET + 86, "<H", 0xFFFF)  # s_extra_devices
    _refused(buf, "device slots do not fit")
    _one_error_line(tmp_path, buf, "65535 device slots do not fit")
    assert len(buf) < DEVICE_TABLE_OFFSET + 128 * 0xFFFF


def test_chunk_size_0_is_refused(tmp_path):
    """Once a ZeroDivisionError when a file's chunks were counted (an image without blobs,
    whose blob table cannot object to the chunk size)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/empty").write_bytes(b"")
    create(CreateOptions(source=str(src), bootstrap=str(tmp_path / "boot")))
    buf = _patch((tmp_path / "boot").read_bytes(), EXT_SUPER_OFFSET + 20, "<I", 0)
    _refused(buf, "chunk size 0x0")
    _one_error_line(tmp_path, buf, "chunk size 0x0")


@pytest.mark.parametrize(
    ("field", "offset", "fmt", "value", "needle"),
    [
        ("mtime", 32, "<Q", 1 << 63, "mtime 9223372036854775808 is out of range"),
        ("mtime", 32, "<Q", (1 << 64) - 1, "mtime 18446744073709551615 is out of range"),
        ("size", 8, "<Q", 1 << 63, "size 9223372036854775808 is out of range"),
        ("nsec", 40, "<I", 10**9, "mtime nanoseconds 1000000000 is out of range"),
    ],
    ids=["mtime-2^63", "mtime-max", "size-2^63", "nsec-1e9"],
)
def test_inode_values_the_kernel_cannot_show_are_refused(
    ours, tmp_path, field, offset, fmt, value, needle
):
    """An inode with mtime or size >= 2^63 once killed nydusd at stat (OverflowError) and
    passed check."""
    sb = RafsV6Super(ours)
    nid = _nid(sb, b"/small.txt")
    assert sb.inode(nid).extended
    buf = _patch(ours, sb.inode_offset(nid) + offset, fmt, value)
    _refused(buf, needle)
    _one_error_line(tmp_path, buf, needle)


def _dirent_offset(buf: bytes, sb: RafsV6Super, dir_nid: int, name: bytes) -> int:
    """File offset of the 12-byte dirent head called `name` in a one-block directory."""
    data = sb._data(dir_nid)
    where = buf.find(data)
    assert where > 0 and len(data) < 4096
    names = list(sb.directory(dir_nid).names)
    return where + 12 * names.index(name)


def test_directory_cycle_ends_the_walk_with_an_error(ours):
    """`rafs.walk` once never ended on a directory that contains itself."""
    sb = RafsV6Super(ours)
    a = _nid(sb, b"/a")
    buf = _patch(ours, _dirent_offset(ours, sb, a, b"b"), "<Q", a)  # /a/b -> /a
    assert RafsV6Super(buf).lookup(a, b"b") == a
    with pytest.raises(FormatError, match=r"/a/b: directory inode \d+ is met twice"):
        for _ in walk(open_bootstrap(buf)):
            pass
    _refused(buf, "is met twice")


def test_a_directory_linked_twice_is_refused(ours):
    """Not a cycle, but a walk that would visit a subtree twice (and exponentially often
    when nested): the reader says so."""
    sb = RafsV6Super(ours)
    a, many = _nid(sb, b"/a"), _nid(sb, b"/many")
    buf = _patch(ours, _dirent_offset(ours, sb, a, b"b"), "<Q", many)  # /a/b -> /many
    _refused(buf, "is met twice")


def test_dirent_name_with_a_slash_is_refused(ours):
    """A name holding '/' would make `nydus-image unpack` write a path outside its entry."""
    sb = RafsV6Super(ours)
    a = _nid(sb, b"/a")
    data = sb._data(a)
    where = ours.find(data)
    i = data.index(b"hard-link")
    buf = bytearray(ours)
    buf[where + i + 4] = ord("/")  # "hard/link"
    _refused(bytes(buf), "invalid name 'hard/link'")
