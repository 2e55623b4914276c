"""dm-verity hash trees (format 1, SHA-256, empty salt, 4 KiB data and hash blocks), as
`veritysetup format --no-superblock --format=1 -s "" --hash=sha256` lays them out.

Level 0 holds the digests of the data blocks, 128 to a hash block, zero padded; level i+1
the digests of level i's blocks; the hash area stores the top level first, level 0 last.
The root hash is the digest of the single top-level block (of the only data block when
there is just one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["VerityTree", "build_hash_tree"]

BLOCK = 4096
DIGEST = 32
PER_BLOCK = BLOCK // DIGEST  # 128


class VerityTree:
    """The hash area (bytes to store at the hash offset) and the root hash."""

    def __init__(self, hash_area: bytes, root: bytes, data_blocks: int) -> None:
        self.hash_area = hash_area
        self.root = root
        self.data_blocks = data_blocks

    def options(self, hash_offset: int) -> str:
        """The `veritysetup` arguments that check this tree (as upstream prints them)."""
        return (
            '--no-superblock --format=1 -s "" --hash=sha256 '
            f"--data-block-size={BLOCK} --hash-block-size={BLOCK} "
            f"--data-blocks {self.data_blocks} --hash-offset {hash_offset} {self.root.hex()}"
        )


def _digests(blocks: Callable[[int, int], bytes], start: int, end: int) -> bytes:
    data = blocks(start, end)
    sha = hashlib.sha256
    return b"".join(sha(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))


def _pack_level(digests: bytes) -> bytes:
    """Digests packed 128 to a 4 KiB block, the last block zero padded."""
    return digests + b"\0" * (-len(digests) % BLOCK)


def build_hash_tree(
    read_blocks: Callable[[int, int], bytes], data_blocks: int, threads: int = 4
) -> VerityTree:
    """Hash `data_blocks` blocks; `read_blocks(first, end)` returns blocks [first, end)."""
    if data_blocks <= 0:
        raise ValueError("dm-verity needs at least one data block")
    step = 2048  # data blocks per task (8 MiB)
    ranges = [(s, min(s + step, data_blocks)) for s in range(0, data_blocks, step)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        level0 = b"".join(pool.map(lambda r: _digests(read_blocks, *r), ranges))
    if data_blocks == 1:
        return VerityTree(b"", level0, 1)
    levels = [_pack_level(level0)]
    while len(levels[-1]) > BLOCK:
        below = levels[-1]
        above = b"".join(
            hashlib.sha256(below[i : i + BLOCK]).digest() for i in range(0, len(below), BLOCK)
        )
        levels.append(_pack_level(above))
    root = hashlib.sha256(levels[-1]).digest()
    return VerityTree(b"".join(reversed(levels)), root, data_blocks)
