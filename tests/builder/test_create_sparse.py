"""(h) A 3 GiB sparse file (a few KiB of data, the rest holes) builds in bounded memory and reads
back correctly through the kernel (format spec 12, R2)."""

from __future__ import annotations

import os
import random

from tests.helpers.env import EROFS_MOUNT
from tests.helpers.erofs import mount_erofs
from tests.helpers.proc import run_measured
from tests.helpers.trees import make_sparse_file

pytestmark = [*EROFS_MOUNT]

GIB = 1 << 30
SIZE = 3 * GIB
RSS_LIMIT = 300 * 1024 * 1024


def test_multi_gib_sparse_file(nydus_image, tmp_path):
    rng = random.Random(5)
    pieces = {
        0: b"head-of-file",
        GIB + 12345: rng.randbytes(3 * 1024 * 1024),  # spans several 1 MiB chunks
        2 * GIB - 4096: rng.randbytes(8192),  # straddles the 2 GiB boundary
        SIZE - 100: b"tail" * 25,
    }
    src = tmp_path / "src"
    src.mkdir()
    make_sparse_file(src / "huge.img", SIZE, pieces)
    (src / "small").write_bytes(b"small\n")
    out = tmp_path / "out"
    out.mkdir()
    boot, blob = out / "bootstrap", out / "blob"
    # default chunk size (1 MiB): 3072 chunk-index entries for one file
    m = run_measured(
        [nydus_image, "create", src, "--bootstrap", boot, "--blob", blob, "--compressor", "none"],
        timeout=600,
    )
    assert m.returncode == 0, m.stderr
    assert 0 < m.maxrss_bytes < RSS_LIMIT, f"peak RSS {m.maxrss_bytes / 2**20:.0f} MiB"
    # holes dedup to one zero chunk: the blob holds the few data chunks, not 3 GiB
    assert blob.stat().st_size < 16 * 1024 * 1024, blob.stat().st_size
    with mount_erofs(boot, [blob], tmp_path / "mnt") as mp:
        path = mp / "huge.img"
        assert os.lstat(path).st_size == SIZE
        with open(path, "rb") as f:
            for off, data in pieces.items():
                f.seek(off)
                assert f.read(len(data)) == data, f"data at {off:#x}"
                # the bytes around each piece are hole (zeros)
                if off >= 16:
                    f.seek(off - 16)
                    assert f.read(16) == bytes(16), f"hole before {off:#x}"
            for off in (4096, GIB // 2, GIB + 12345 + 3 * 1024 * 1024, SIZE - 1024 * 1024 - 7):
                f.seek(off)
                assert f.read(4096) == bytes(4096), f"hole at {off:#x}"
            f.seek(SIZE - 1)
            assert f.read(10) == b"l"  # last byte of the file, then EOF
        assert (mp / "small").read_bytes() == b"small\n"
