"""The FUSE kernel protocol (linux/fuse.h, protocol 7.x) as bytes <-> values, no I/O.

Only what a read-only filesystem server needs: the request and reply headers, the INIT
handshake, entries and attributes, directory records (plain and "plus"), open replies,
statfs and xattr size replies. Every record is little-endian and 8-byte aligned as the
kernel lays it out.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass

from nydus.format.rafs import Attr

__all__ = [
    "ATTR",
    "ENTRY_OUT",
    "INIT_IN",
    "IN_HEADER",
    "KERNEL_MAJOR",
    "KERNEL_MINOR",
    "OUT_HEADER",
    "READ_IN",
    "InitFlags",
    "InitReply",
    "Opcode",
    "OpenFlags",
    "attr_out",
    "dirent",
    "direntplus",
    "entry_out",
    "init_out",
    "opcode_name",
    "open_out",
    "size_out",
    "statfs_out",
]

#: the protocol version this server speaks (the kernel adapts down to it)
KERNEL_MAJOR = 7
KERNEL_MINOR = 31
ROOT_ID = 1


class Opcode:
    """Request opcodes (plain ints: an enum of 50 members costs milliseconds at start)."""

    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36  # no reply
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42  # no reply
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51


def opcode_name(opcode: int) -> str:
    """ "lookup", "read"... for an opcode number (for log lines)."""
    for name, value in vars(Opcode).items():
        if value == opcode and name.isupper():
            return name.lower()
    return f"opcode {opcode}"


#: requests that would change the filesystem: answered EROFS
WRITE_OPCODES = frozenset(
    {
        Opcode.SETATTR,
        Opcode.SYMLINK,
        Opcode.MKNOD,
        Opcode.MKDIR,
        Opcode.UNLINK,
        Opcode.RMDIR,
        Opcode.RENAME,
        Opcode.LINK,
        Opcode.WRITE,
        Opcode.SETXATTR,
        Opcode.REMOVEXATTR,
        Opcode.CREATE,
        Opcode.FALLOCATE,
        Opcode.RENAME2,
        Opcode.COPY_FILE_RANGE,
        Opcode.TMPFILE,
    }
)
#: requests the kernel sends without waiting for a reply
NO_REPLY_OPCODES = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT})


class InitFlags:
    """fuse_init_in/out `flags` (the low 32 bits)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    FLOCK_LOCKS = 1 << 10
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25


class OpenFlags:
    """fuse_open_out `open_flags` (FOPEN_*)."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5


# ---- headers ---------------------------------------------------------------------------
#: fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid u32, gid u32, pid u32,
#: total_extlen u16 (8-byte units of extensions after the arguments), padding u16
IN_HEADER = struct.Struct("<IIQQIIIHH")
#: fuse_out_header: len u32 (header included), error i32 (-errno), unique u64
OUT_HEADER = struct.Struct("<IiQ")

# ---- request arguments (after the in header) --------------------------------------------
#: fuse_init_in: major, minor, max_readahead (bytes), flags, flags2 (7.36+), unused[11]
INIT_IN = struct.Struct("<IIII")
#: fuse_forget_in: nlookup u64
FORGET_IN = struct.Struct("<Q")
#: fuse_batch_forget_in: count u32, dummy u32; then `count` fuse_forget_one (nodeid, nlookup)
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
#: fuse_open_in: flags u32 (open(2) flags), open_flags u32 (FUSE_OPEN_*)
OPEN_IN = struct.Struct("<II")
#: fuse_read_in: fh u64, offset u64, size u32, read_flags u32, lock_owner u64, flags u32, pad
READ_IN = struct.Struct("<QQII")
#: fuse_release_in: fh u64, flags u32, release_flags u32, lock_owner u64
RELEASE_IN = struct.Struct("<QII")
#: fuse_getxattr_in: size u32 (0 asks for the length), padding u32; then the name, NUL-ended
GETXATTR_IN = struct.Struct("<II")
#: fuse_access_in: mask u32 (R_OK/W_OK/X_OK), padding u32
ACCESS_IN = struct.Struct("<II")
#: fuse_interrupt_in: unique u64 of the request to interrupt
INTERRUPT_IN = struct.Struct("<Q")

# ---- replies --------------------------------------------------------------------------
#: fuse_attr: ino, size, blocks (512 B), atime, mtime, ctime (u64, seconds as the kernel's
#: s64), atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev (new_encode_dev),
#: blksize, flags (u32)
ATTR = struct.Struct("<QQQqqqIIIIIIIIII")
#: fuse_entry_out: nodeid, generation, entry_valid, attr_valid (s), entry_valid_nsec,
#: attr_valid_nsec, then fuse_attr
ENTRY_OUT = struct.Struct("<QQQQII")
#: fuse_attr_out: attr_valid (s) u64, attr_valid_nsec u32, dummy u32, then fuse_attr
ATTR_OUT = struct.Struct("<QII")
#: fuse_open_out: fh u64, open_flags u32 (FOPEN_*), padding u32
OPEN_OUT = struct.Struct("<QII")
#: fuse_dirent: ino u64, off u64 (of the next entry), namelen u32, type u32 (DT_*), name
DIRENT = struct.Struct("<QQII")
#: fuse_kstatfs: blocks, bfree, bavail, files, ffree (u64), bsize, namelen, frsize, padding,
#: spare[6] (u32)
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
#: fuse_getxattr_out / the size-only reply of GETXATTR and LISTXATTR: size u32, padding u32
SIZE_OUT = struct.Struct("<II")
#: fuse_init_out: major, minor, max_readahead, flags (u32), max_background,
#: congestion_threshold (u16), max_write, time_gran (u32), max_pages, map_alignment (u16),
#: flags2 u32, unused[7]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")

ENTRY_SIZE = ENTRY_OUT.size + ATTR.size  # 128
DIRENT_SIZE = DIRENT.size  # 24, the name follows
DIRENTPLUS_SIZE = ENTRY_SIZE + DIRENT_SIZE  # 152, the name follows


def _attr(a: Attr) -> bytes:
    return ATTR.pack(
        a.ino,
        a.size,
        (a.size + 511) // 512,
        a.mtime,
        a.mtime,
        a.mtime,
        a.mtime_nsec,
        a.mtime_nsec,
        a.mtime_nsec,
        a.mode,
        a.nlink,
        a.uid,
        a.gid,
        a.rdev & 0xFFFF_FFFF,
        4096,
        0,
    )


def _timeout(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1_000_000_000)


def entry_out(nodeid: int, a: Attr | None, entry_timeout: float, attr_timeout: float) -> bytes:
    """fuse_entry_out; `a` None with nodeid 0 is a negative entry (the name is absent)."""
    es, ens = _timeout(entry_timeout)
    as_, ans = _timeout(attr_timeout)
    head = ENTRY_OUT.pack(nodeid, 0, es, as_, ens, ans)
    return head + (_attr(a) if a is not None else bytes(ATTR.size))


def attr_out(a: Attr, attr_timeout: float) -> bytes:
    s, ns = _timeout(attr_timeout)
    return ATTR_OUT.pack(s, ns, 0) + _attr(a)


def open_out(fh: int, flags: int) -> bytes:
    return OPEN_OUT.pack(fh, flags, 0)


def size_out(size: int) -> bytes:
    return SIZE_OUT.pack(size, 0)


def statfs_out(
    blocks: int,
    bfree: int,
    bavail: int,
    files: int,
    ffree: int,
    bsize: int,
    namelen: int,
    frsize: int,
) -> bytes:
    return STATFS_OUT.pack(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, 0)


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def dirent(ino: int, next_offset: int, mode: int, name: bytes) -> bytes:
    """One fuse_dirent record, padded to 8 bytes."""
    rec = DIRENT.pack(ino, next_offset, len(name), stat.S_IFMT(mode) >> 12) + name
    return rec.ljust(_pad8(len(rec)), b"\0")


def direntplus(
    nodeid: int,
    a: Attr,
    next_offset: int,
    name: bytes,
    entry_timeout: float,
    attr_timeout: float,
) -> bytes:
    """One fuse_direntplus record (entry + dirent), padded to 8 bytes."""
    rec = (
        entry_out(nodeid, a, entry_timeout, attr_timeout)
        + DIRENT.pack(a.ino, next_offset, len(name), stat.S_IFMT(a.mode) >> 12)
        + name
    )
    return rec.ljust(_pad8(len(rec)), b"\0")


@dataclass(frozen=True, slots=True)
class InitReply:
    """What this server answers to FUSE_INIT (see `init_out`)."""

    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    max_pages: int


def init_out(kernel_minor: int, r: InitReply) -> bytes:
    minor = min(kernel_minor, KERNEL_MINOR)
    return INIT_OUT.pack(
        KERNEL_MAJOR,
        minor,
        r.max_readahead,
        r.flags,
        r.max_background,
        r.congestion_threshold,
        r.max_write,
        1,  # time_gran: nanoseconds
        r.max_pages,
        0,
        0,
    )
