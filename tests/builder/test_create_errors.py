"""(g) Bad input to `nydus-image create`: a non-zero exit, exactly one error line naming the cause,
no traceback, and no output left behind -- neither new files nor changes to files that already
sat at the output paths (design.md section 5: write to a temporary name, then rename).
None of this needs root: run as root, the unreadable-input cases drop to nobody.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.builder.conftest import run_nydus_image
from tests.helpers.env import require_tools
from tests.helpers.layers import D, F, H, Member, broken_gzip, layer_bytes
from tests.helpers.trees import make_large_tree

# "ERROR: ...", "error: ...", "<timestamp> - ERROR - ..." (upstream log style) or
# "nydus-image create: error: ..." (argparse)
ERROR_LINE = re.compile(r"^(?:\S+ - )?(?:[\w.\-]+(?: [\w.\-]+)?: )?(?:ERROR|error)\b")
NOBODY = 65534


@dataclass
class Case:
    args: list[str]  # everything after "create" except the output flags
    causes: tuple[str, ...]  # the error line must contain one of these (case-insensitive)
    as_nobody: bool = False  # unreadable input: run as nobody when the test runs as root
    blob: str | None = None  # --blob path instead of OUT/blob
    bootstrap: str | None = None  # --bootstrap path instead of OUT/bootstrap


def _small_dir(base: Path) -> Path:
    d = base / "small-src"
    d.mkdir()
    (d / "file").write_bytes(b"hello\n")
    return d


def _tar(base: Path, name: str, data: bytes) -> Path:
    p = base / name
    p.write_bytes(data)
    return p


def case_missing_source(base: Path) -> Case:
    return Case(
        [str(base / "does-not-exist")], ("does-not-exist", "no such", "not exist", "not found")
    )


def case_source_not_a_directory(base: Path) -> Case:
    f = base / "plain-file"
    f.write_bytes(b"not a dir")
    return Case([str(f), "--type", "dir-rafs"], ("plain-file", "not a directory", "directory"))


def case_unreadable_file_in_source(base: Path) -> Case:
    src = _small_dir(base)
    secret = src / "secret-file"
    secret.write_bytes(b"top secret")
    secret.chmod(0)
    return Case([str(src)], ("secret-file", "permission"), as_nobody=True)


def case_unreadable_source_dir(base: Path) -> Case:
    src = base / "closed-src"
    src.mkdir()
    (src / "inner").write_bytes(b"x")
    src.chmod(0)
    return Case([str(src)], ("closed-src", "permission"), as_nobody=True)


def case_garbage_tar(base: Path) -> Case:
    rng = random.Random(1)
    t = _tar(base, "garbage.tar", rng.randbytes(10 * 1024))
    return Case(
        [str(t), "--type", "tar-rafs"], ("garbage.tar", "tar", "header", "invalid", "corrupt")
    )


def case_truncated_tar(base: Path) -> Case:
    rng = random.Random(2)
    full = layer_bytes([D("d"), F("d/big", rng.randbytes(200 * 1024)), F("d/after", b"after")])
    t = _tar(base, "truncated.tar", full[: 1024 + 100 * 1024])
    return Case(
        [str(t), "--type", "tar-rafs"], ("truncated", "unexpected end", "eof", "end of", "short")
    )


def case_tar_dotdot(base: Path) -> Case:
    t = _tar(base, "dotdot.tar", layer_bytes([D("a"), F("a/../../evil", b"x")]))
    return Case([str(t), "--type", "tar-rafs"], ("..", "escap", "outside", "evil"))


def case_tar_leading_dotdot(base: Path) -> Case:
    t = _tar(base, "dotdot2.tar", layer_bytes([F("../evil", b"x")]))
    return Case([str(t), "--type", "tar-rafs"], ("..", "escap", "outside", "evil"))


def case_tar_absolute(base: Path) -> Case:
    t = _tar(base, "absolute.tar", layer_bytes([F("/abs/escape", b"x")]))
    return Case([str(t), "--type", "tar-rafs"], ("absolute", "/abs/escape", "escap", "outside"))


def case_tar_hardlink_missing_target(base: Path) -> Case:
    t = _tar(base, "hardlink.tar", layer_bytes([D("d"), H("d/hl-entry", "d/missing-target")]))
    return Case([str(t), "--type", "tar-rafs"], ("missing-target",))


def case_tar_name_too_long(base: Path) -> Case:
    t = _tar(base, "longname.tar", layer_bytes([D("d"), F("d/" + "n" * 256, b"x")]))
    return Case([str(t), "--type", "tar-rafs"], ("too long", "255", "name length", "nnnnnnnn"))


def case_tar_bad_whiteout_dotdot(base: Path) -> Case:
    t = _tar(base, "whdotdot.tar", layer_bytes([D("a"), F("a/.wh..")]))
    return Case([str(t), "--type", "tar-rafs"], ("invalid whiteout", ".wh.."))


def case_tar_bad_whiteout_empty(base: Path) -> Case:
    t = _tar(base, "whempty.tar", layer_bytes([F(".wh.")]))
    return Case([str(t), "--type", "tar-rafs"], ("invalid whiteout", ".wh."))


def _range_case(base: Path, name: str, member, needle: str, fmt: str = "pax") -> Case:
    t = _tar(base, f"{name}.tar", layer_bytes([D("d"), member], fmt))
    return Case([str(t), "--type", "tar-rafs"], (needle,))


def case_tar_mtime_negative(base: Path) -> Case:
    return _range_case(base, "mtneg", F("d/f", b"x", mtime=-5), "mtime -5 is out of range", "gnu")


def case_tar_mtime_2_64(base: Path) -> Case:
    return _range_case(base, "mt64", F("d/f", b"x", mtime=2**64), "mtime 18446744073709551616")


def case_tar_mtime_2_63(base: Path) -> Case:
    """Storable in RAFS's u64, but the kernel takes seconds as signed."""
    return _range_case(base, "mt63", F("d/f", b"x", mtime=2**63), "mtime 9223372036854775808")


def case_tar_pax_mtime_not_a_number(base: Path) -> Case:
    member = F("d/f", b"x", pax={"mtime": "1e400"})
    return _range_case(base, "mtinf", member, "pax mtime '1e400' is not a time")


def case_tar_uid_2_32(base: Path) -> Case:
    return _range_case(base, "uid32", F("d/f", b"x", uid=2**32), "uid 4294967296 is out of range")


def case_tar_gid_negative(base: Path) -> Case:
    return _range_case(base, "gidneg", F("d/f", b"x", gid=-1), "gid -1 is out of range", "gnu")


def case_tar_device_major_too_big(base: Path) -> Case:
    member = Member("d/dev", "chr", devmajor=2**40)
    return _range_case(base, "devbig", member, "device 1099511627776:0 is out of range", "gnu")


def case_tar_size_negative(base: Path) -> Case:
    """A GNU base-256 size of -1 (the header checksum made right)."""
    raw = bytearray(layer_bytes([F("f", b"hello")], "gnu"))
    raw[124:136] = b"\xff" * 12
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    t = _tar(base, "sizeneg.tar", bytes(raw))
    return Case([str(t), "--type", "tar-rafs"], ("size -1 is out of range",))


def _gzip_case(base: Path, fault: str, needles: tuple[str, ...]) -> Case:
    tar = layer_bytes([D("d"), F("d/big", b"a" * 65536 + bytes(range(256)) * 256)])
    t = _tar(base, f"{fault}.tar.gz", broken_gzip(tar, fault))
    return Case([str(t), "--type", "targz-rafs"], needles)


def case_targz_bad_crc_after_the_tar_end(base: Path) -> Case:
    """Once built with exit 0: the tar reader stopped at its end blocks, the CRC unread."""
    return _gzip_case(base, "crc-after-junk", ("checksum", "invalid gzip"))


def case_targz_stored_block_flipped_byte(base: Path) -> Case:
    return _gzip_case(base, "stored-flip", ("checksum", "invalid gzip"))


def case_targz_trailing_garbage(base: Path) -> Case:
    return _gzip_case(base, "trailing-garbage", ("trailing data after the gzip stream",))


def case_targz_truncated_trailer(base: Path) -> Case:
    return _gzip_case(base, "truncated-trailer", ("gzip stream ends early",))


def case_parent_not_rafs(base: Path) -> Case:
    parent = base / "not-a-bootstrap"
    parent.write_bytes(random.Random(3).randbytes(8192))
    return Case(
        [str(_small_dir(base)), "--parent-bootstrap", str(parent)],
        ("not-a-bootstrap", "parent", "bootstrap", "rafs", "magic"),
    )


def case_parent_plain_erofs(base: Path) -> Case:
    """A valid EROFS image that is not RAFS (no RAFS extended superblock)."""
    require_tools("mkfs.erofs")
    img = base / "plain-erofs.img"
    src = _small_dir(base)
    subprocess.run(["mkfs.erofs", "--quiet", str(img), str(src)], check=True, capture_output=True)
    return Case(
        [str(src), "--parent-bootstrap", str(img)],
        ("plain-erofs.img", "parent", "rafs", "bootstrap"),
    )


def _many_files(base: Path) -> Path:
    """A few MB in 200 files: enough for the builder's parallel chunk workers to be busy."""
    src = base / "many-src"
    make_large_tree(src, total_bytes=4_000_000, nfiles=200, seed=4)
    return src


def case_blob_dir_missing(base: Path) -> Case:
    """The --blob path lies in a directory that does not exist: the error names that path."""
    return Case(
        [str(_many_files(base))],
        ("no-such-blob-dir",),
        blob=str(base / "no-such-blob-dir" / "blob"),
    )


def case_bootstrap_dir_missing(base: Path) -> Case:
    return Case(
        [str(_many_files(base))],
        ("no-such-boot-dir",),
        bootstrap=str(base / "no-such-boot-dir" / "boot"),
    )


def case_chunk_size_not_power_of_two(base: Path) -> Case:
    return Case([str(_small_dir(base)), "--chunk-size", "3000"], ("chunk",))


def case_chunk_size_too_big(base: Path) -> Case:
    return Case([str(_small_dir(base)), "--chunk-size", "0x2000000"], ("chunk",))


def case_chunk_size_too_small(base: Path) -> Case:
    return Case([str(_small_dir(base)), "--chunk-size", "0x800"], ("chunk",))


def case_bad_compressor(base: Path) -> Case:
    return Case([str(_small_dir(base)), "--compressor", "lzma"], ("compressor", "lzma"))


def case_fs_version_5(base: Path) -> Case:
    return Case([str(_small_dir(base)), "--fs-version", "5"], ("version", "v5", " 5"))


CASES: dict[str, Callable[[Path], Case]] = {
    name[len("case_") :]: fn
    for name, fn in dict(globals()).items()
    if name.startswith("case_") and callable(fn)
}


@pytest.fixture
def world_dir(request):
    """A scratch directory every user can traverse (for runs as nobody); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="nydus-bad-input-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):  # restore permissions so rmtree can descend
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def _state(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


@pytest.mark.parametrize("preexisting", [False, True], ids=["fresh", "preexisting"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, preexisting, nydus_image, world_dir):
    base = world_dir / "in"
    base.mkdir()
    base.chmod(0o755)
    c = CASES[case](base)
    out = world_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    boot, blob, report = out / "bootstrap", out / "blob", out / "output.json"
    if preexisting:
        for p, content in ((boot, b"OLD BOOTSTRAP"), (blob, b"OLD BLOB"), (report, b"{}")):
            p.write_bytes(content)
            os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    before = _state(out)
    args = [
        "create",
        *c.args,
        "--bootstrap",
        c.bootstrap or str(boot),
        "--blob",
        c.blob or str(blob),
        "--output-json",
        str(report),
    ]
    if c.as_nobody and os.geteuid() == 0:  # root reads everything: drop to nobody
        require_tools("setpriv")
        cmd = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            nydus_image,
            *args,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300)
    else:
        r = run_nydus_image(nydus_image, args, timeout=300)
    shown = f"nydus-image {' '.join(args)}\nexit {r.returncode}\nstderr:\n{r.stderr}"
    assert r.returncode != 0, shown
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, shown
    errors = [line for line in r.stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1, f"expected exactly one error line\n{shown}"
    assert any(k.lower() in errors[0].lower() for k in c.causes), (
        f"error line does not name the cause {c.causes}\n{shown}"
    )
    for override in (c.blob, c.bootstrap):
        if override:
            assert not os.path.exists(os.path.dirname(override)), f"{override}: created\n{shown}"
    assert _state(out) == before, (
        f"output directory changed: {sorted(before)} -> {sorted(p.name for p in out.iterdir())}\n{shown}"
    )
