"""On-disk facts in one place: every record's SIZE is the spec's, the offset arithmetic of
format/layout.py gives the spec's and the golden image's numbers, and the raw chunk-record
positions the reader uses name ChunkInfo's fields in order."""

from __future__ import annotations

import dataclasses

from nydus.format import layout, v6
from nydus.format.blobmeta import BlobMetaHeader, ChunkMeta, TocEntry
from nydus.format.rafs import open_bootstrap
from nydus.format.v5 import V5ExtBlobEntry, V5Inode, V5SuperBlock
from nydus.format.v6 import (
    BlobInfo,
    ChunkAddr,
    ChunkInfo,
    DeviceSlot,
    Dirent,
    ExtSuperBlock,
    Inode,
    SuperBlock,
)
from nydus.format.v6reader import RafsV6Super
from tests.golden import golden_path


def test_record_sizes_are_the_specs():
    sizes = {
        "SuperBlock": SuperBlock.SIZE,
        "ExtSuperBlock": ExtSuperBlock.SIZE,
        "DeviceSlot": DeviceSlot.SIZE,
        "BlobInfo": BlobInfo.SIZE,
        "Inode.EXT": Inode.EXT_SIZE,
        "Inode.COMPACT": Inode.COMPACT_SIZE,
        "Dirent": Dirent.SIZE,
        "ChunkAddr": ChunkAddr.SIZE,
        "ChunkInfo": ChunkInfo.SIZE,
        "V5SuperBlock": V5SuperBlock.SIZE,
        "V5ExtBlobEntry": V5ExtBlobEntry.SIZE,
        "V5Inode": V5Inode.SIZE,
        "ChunkMeta.V1": ChunkMeta.V1_SIZE,
        "ChunkMeta.V2": ChunkMeta.V2_SIZE,
        "BlobMetaHeader": BlobMetaHeader.SIZE,
        "TocEntry": TocEntry.SIZE,
    }
    assert sizes == {
        "SuperBlock": 128,
        "ExtSuperBlock": 256,
        "DeviceSlot": 128,
        "BlobInfo": 256,
        "Inode.EXT": 64,
        "Inode.COMPACT": 32,
        "Dirent": 12,
        "ChunkAddr": 8,
        "ChunkInfo": 80,
        "V5SuperBlock": 8192,
        "V5ExtBlobEntry": 64,
        "V5Inode": 128,
        "ChunkMeta.V1": 16,
        "ChunkMeta.V2": 24,
        "BlobMetaHeader": 4096,
        "TocEntry": 128,
    }
    assert (V5SuperBlock.STRUCT.size, BlobMetaHeader.MAGIC2_OFFSET) == (80, 4092)


def test_table_offsets():
    assert [layout.device_slot_offset(i) for i in (0, 1, 2)] == [1408, 1536, 1664]
    assert layout.blob_table_start(1) == 4096
    assert layout.blob_table_start(21) == 4096  # 1408 + 21 * 128 = 4096 exactly
    assert layout.blob_table_start(22) == 8192
    assert layout.blob_entry_offset(4096, 2) == 4096 + 512
    assert layout.chunk_info_offset(16384, 3) == 16384 + 240
    assert layout.prefetch_entry_offset(4352, 5) == 4372
    assert layout.inode_offset(2, 128) == 2 * 4096 + 128 * 32
    assert layout.nid_of(2, 2 * 4096 + 133 * 32) == 133
    # chunk index arrays start 8-byte aligned after the inode and its xattrs
    assert layout.chunk_index_offset(4096, 64, 0) == 4160
    assert layout.chunk_index_offset(4096, 64, 20) == 4184
    assert layout.inode_tail_offset(4096, 64, 20) == 4180
    assert [layout.chunk_count(n, 0x100000) for n in (0, 1, 0x100000, 0x100001)] == [0, 1, 1, 2]


def test_golden_v6_placement():
    """rafs-format §4.6/§4.10: root at nid 128 with its inline tail, the next inode at nid
    133, a one-chunk file's chunk index right after its 64-byte inode."""
    sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
    assert isinstance(sb, RafsV6Super)
    blkaddr = sb.sb.meta_blkaddr
    assert sb.inode_offset(128) == layout.inode_offset(blkaddr, 128)
    files = [e.ino for e in sb.readdir(128)]
    assert files == [133, 136]
    ino = sb.inode(133)
    start = layout.chunk_index_offset(sb.inode_offset(133), ino.inode_size, ino.xattr_size)
    assert start == sb.inode_offset(133) + 64
    assert ChunkAddr.unpack(sb.buf, start) == sb.chunk_addrs(133)[0]


def test_raw_chunk_positions_name_chunkinfo_fields():
    names = [f.name for f in dataclasses.fields(ChunkInfo)]
    positions = {
        "digest": v6.RAW_DIGEST,
        "blob_index": v6.RAW_BLOB_INDEX,
        "flags": v6.RAW_FLAGS,
        "compressed_size": v6.RAW_COMPRESSED_SIZE,
        "uncompressed_size": v6.RAW_UNCOMPRESSED_SIZE,
        "compressed_offset": v6.RAW_COMPRESSED_OFFSET,
        "uncompressed_offset": v6.RAW_UNCOMPRESSED_OFFSET,
        "file_offset": v6.RAW_FILE_OFFSET,
        "index": v6.RAW_INDEX,
        "crc32": v6.RAW_CRC32,
    }
    assert [names[p] for p in positions.values()] == list(positions)
    rec = ChunkInfo(b"d" * 32, 3, v6.ChunkFlags.COMPRESSED, 10, 20, 30, 40, 50, 60, 70)
    raw = ChunkInfo.STRUCT.unpack(rec.pack())
    assert [raw[p] for p in positions.values()] == [getattr(rec, n) for n in positions]
