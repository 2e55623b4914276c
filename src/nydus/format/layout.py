"""Where the records of a RAFS v6 bootstrap sit: the offset arithmetic that the reader
(`v6reader`) and the writer (`builder.bootstrap`) share (rafs-format §3, §4.3-4.6, §4.10,
§4.11). All offsets are absolute byte offsets in the bootstrap file.

```
0     1024        1152            1408                     blob_table_offset
| ... | superblock | ext superblock | device slots (128 B) ... | blob table (256 B each)
      | prefetch table (u32 nids) | ... meta_blkaddr * 4096: inodes on 32-byte slots (nids)
      | ... directory / symlink blocks | chunk table (80 B each, 4 KiB aligned)
```
"""

from __future__ import annotations

import struct

from nydus.format.constants import BLOCK_SIZE, DEVICE_TABLE_OFFSET, align
from nydus.format.v6 import BlobInfo, ChunkAddr, ChunkInfo, DeviceSlot

__all__ = [
    "INODE_SLOT",
    "PREFETCH_ENTRY",
    "blob_entry_offset",
    "blob_table_start",
    "chunk_count",
    "chunk_index_offset",
    "chunk_info_offset",
    "device_slot_offset",
    "inode_offset",
    "inode_tail_offset",
    "meta_base",
    "nid_of",
    "prefetch_entry_offset",
]

INODE_SLOT = 32  # bytes: every inode starts on a 32-byte slot; a nid numbers the slots
PREFETCH_ENTRY = struct.Struct("<I")  # a prefetch table entry: u32 nid (0 ends the list)


def meta_base(meta_blkaddr: int) -> int:
    """Offset of the metadata area, where nid 0 would be."""
    return meta_blkaddr * BLOCK_SIZE


def inode_offset(meta_blkaddr: int, nid: int) -> int:
    """Offset of the inode numbered `nid`."""
    return meta_blkaddr * BLOCK_SIZE + nid * INODE_SLOT


def nid_of(meta_blkaddr: int, offset: int) -> int:
    """The nid of an inode placed at `offset` (a slot boundary in the metadata area)."""
    return (offset - meta_blkaddr * BLOCK_SIZE) // INODE_SLOT


def inode_tail_offset(inode_off: int, inode_size: int, xattr_size: int) -> int:
    """Offset right after an inode and its inline xattrs: where a FLAT_INLINE tail goes."""
    return inode_off + inode_size + xattr_size


def chunk_index_offset(inode_off: int, inode_size: int, xattr_size: int) -> int:
    """Offset of a CHUNK_BASED inode's chunk index array (8-byte aligned after the xattrs)."""
    end = inode_off + inode_size + xattr_size
    return end + -end % ChunkAddr.SIZE


def chunk_count(file_size: int, chunk_size: int) -> int:
    """Entries in a regular file's chunk index array: one per filesystem chunk."""
    return (file_size + chunk_size - 1) // chunk_size


def device_slot_offset(index: int) -> int:
    """Offset of device slot `index` (blob `index`, EROFS device id `index + 1`)."""
    return DEVICE_TABLE_OFFSET + DeviceSlot.SIZE * index


def blob_table_start(nblobs: int) -> int:
    """Where the writer puts the blob table: the first block after `nblobs` device slots."""
    return align(device_slot_offset(nblobs), BLOCK_SIZE)


def blob_entry_offset(table_offset: int, index: int) -> int:
    """Offset of blob table entry `index` in a table at `table_offset`."""
    return table_offset + BlobInfo.SIZE * index


def chunk_info_offset(table_offset: int, index: int) -> int:
    """Offset of chunk table record `index` in a table at `table_offset`."""
    return table_offset + ChunkInfo.SIZE * index


def prefetch_entry_offset(table_offset: int, index: int) -> int:
    """Offset of prefetch table entry `index` in a table at `table_offset`."""
    return table_offset + PREFETCH_ENTRY.size * index
