"""The FUSE server's request handling, driven with protocol bytes over a socket pair (no
mount): every opcode a read-only filesystem needs, errno mapping, INTERRUPT."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
import time

import pytest

from nydus.fuse import protocol as P
from nydus.fuse.session import MAX_PAGES, FuseSession

from .memfs import BAD, BOOM, CONTENT, DIR, FILE, LINK, MANY, ROOT, SLOW, MemFs


class Wire:
    """A session whose /dev/fuse is one end of a SOCK_SEQPACKET pair (one reply per
    message, as /dev/fuse delivers them)."""

    def __init__(self, tmp_path) -> None:
        self.fs = MemFs()
        self.session = FuseSession(self.fs, str(tmp_path), threads=2)
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._theirs = theirs
        self.session.fd = theirs.fileno()
        self.unique = 0

    def send(self, opcode: int, nodeid: int = ROOT, args: bytes = b"") -> int:
        self.unique += 1
        hdr = P.IN_HEADER.pack(
            P.IN_HEADER.size + len(args), opcode, self.unique, nodeid, 0, 0, 1, 0, 0
        )
        self.session._dispatch(memoryview(hdr + args))
        return self.unique

    def reply(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        self.ours.settimeout(timeout)
        msg = self.ours.recv(4 << 20)
        length, err, unique = P.OUT_HEADER.unpack_from(msg)
        assert length == len(msg)
        return unique, -err, msg[P.OUT_HEADER.size :]

    def call(self, opcode: int, nodeid: int = ROOT, args: bytes = b"") -> tuple[int, bytes]:
        u = self.send(opcode, nodeid, args)
        unique, err, body = self.reply()
        assert unique == u
        return err, body

    def nothing_pending(self) -> bool:
        self.ours.settimeout(0.2)
        try:
            self.ours.recv(1 << 16)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.ours.close()
        self._theirs.close()


@pytest.fixture
def wire(tmp_path):
    w = Wire(tmp_path)
    yield w
    w.fs.slow_release.set()
    w.close()


def _attr(body: bytes, offset: int = 0) -> tuple:
    return P.ATTR.unpack_from(body, offset)


def _read_in(fh: int, offset: int, size: int) -> bytes:
    return P.READ_IN.pack(fh, offset, size, 0) + bytes(16)


def test_init_negotiates_flags_pages_and_readahead(wire):
    kflags = 0xFFFF_FFFF
    err, body = wire.call(P.Opcode.INIT, 0, struct.pack("<IIII", 7, 44, 128 * 1024, kflags))
    assert err == 0 and len(body) == P.INIT_OUT.size == 64
    major, minor, ra, flags, bg, cong, max_write, gran, pages, _a, _f2 = P.INIT_OUT.unpack(body)
    assert (major, minor) == (7, P.KERNEL_MINOR)
    assert ra == 128 * 1024  # never more than the kernel offers
    for f in ("ASYNC_READ", "DO_READDIRPLUS", "MAX_PAGES", "CACHE_SYMLINKS", "PARALLEL_DIROPS"):
        assert flags & getattr(P.InitFlags, f), f
    assert not flags & P.InitFlags.WRITEBACK_CACHE
    assert pages == MAX_PAGES and gran == 1 and bg > 0 and 0 < cong <= bg and max_write > 0
    # an older kernel gets its own minor back and only the flags it offered
    err, body = wire.call(P.Opcode.INIT, 0, struct.pack("<IIII", 7, 27, 65536, 1))
    assert P.INIT_OUT.unpack(body)[1] == 27 and P.INIT_OUT.unpack(body)[3] == 1


def test_lookup_entry_and_negative_entry(wire):
    err, body = wire.call(P.Opcode.LOOKUP, ROOT, b"file\0")
    assert err == 0 and len(body) == P.ENTRY_SIZE
    nodeid, gen, ev, av, _evn, _avn = P.ENTRY_OUT.unpack_from(body)
    assert (nodeid, gen, ev, av) == (FILE, 0, 86400, 86400)
    a = _attr(body, P.ENTRY_OUT.size)
    ino, size, blocks, atime, mtime, ctime, _ans, mns, _cns, mode, nlink, uid, gid = a[:13]
    assert (ino, size, blocks) == (FILE, len(CONTENT), len(CONTENT) // 512)
    assert mtime == atime == ctime == 1_600_000_000 and mns == 7
    assert (mode, nlink, uid, gid) == (stat.S_IFREG | 0o644, 1, 1000, 1000)
    # absent: node id 0 with a timeout, so the kernel caches the absence
    err, body = wire.call(P.Opcode.LOOKUP, ROOT, b"missing\0")
    nodeid, _g, ev, _av, _e, _a = P.ENTRY_OUT.unpack_from(body)
    assert err == 0 and nodeid == 0 and ev == 86400
    err, _ = wire.call(P.Opcode.LOOKUP, FILE, b"x\0")
    assert err == errno.ENOTDIR


def test_getattr_readlink_statfs(wire):
    err, body = wire.call(P.Opcode.GETATTR, ROOT, bytes(16))
    assert err == 0 and len(body) == P.ATTR_OUT.size + P.ATTR.size
    assert P.ATTR_OUT.unpack_from(body)[0] == 86400
    assert _attr(body, P.ATTR_OUT.size)[9] == stat.S_IFDIR | 0o755
    assert wire.call(P.Opcode.GETATTR, 999, bytes(16))[0] == errno.ENOENT
    assert wire.call(P.Opcode.READLINK, LINK) == (0, b"file")
    assert wire.call(P.Opcode.READLINK, FILE)[0] == errno.EINVAL
    err, body = wire.call(P.Opcode.STATFS, ROOT)
    assert err == 0 and len(body) == 80 and struct.unpack_from("<5QII", body)[5:] == (4096, 255)


def test_open_read_release_and_write_refusals(wire):
    err, body = wire.call(P.Opcode.OPEN, FILE, P.OPEN_IN.pack(os.O_RDONLY, 0))
    fh, oflags, _ = P.OPEN_OUT.unpack(body)
    assert err == 0 and fh == FILE and oflags & P.OpenFlags.KEEP_CACHE
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert wire.call(P.Opcode.OPEN, FILE, P.OPEN_IN.pack(flags, 0))[0] == errno.EROFS
    # reads run in the worker pool: the reply comes from another thread
    assert wire.call(P.Opcode.READ, FILE, _read_in(FILE, 1000, 5000)) == (0, CONTENT[1000:6000])
    assert wire.call(P.Opcode.RELEASE, FILE, P.RELEASE_IN.pack(FILE, 0, 0) + bytes(8)) == (0, b"")
    for op in (P.Opcode.WRITE, P.Opcode.MKDIR, P.Opcode.SETATTR, P.Opcode.CREATE, P.Opcode.UNLINK):
        assert wire.call(op, FILE, bytes(64))[0] == errno.EROFS, P.opcode_name(op)
    assert wire.call(P.Opcode.ACCESS, FILE, P.ACCESS_IN.pack(os.W_OK, 0))[0] == errno.EROFS
    assert wire.call(P.Opcode.ACCESS, FILE, P.ACCESS_IN.pack(os.R_OK, 0)) == (0, b"")


def test_unsupported_opcodes_are_enosys(wire):
    # FLUSH/FSYNC answered ENOSYS: the kernel stops sending them
    for op in (
        P.Opcode.FLUSH,
        P.Opcode.FSYNC,
        P.Opcode.GETLK,
        P.Opcode.IOCTL,
        P.Opcode.LSEEK,
        4096,
    ):
        assert wire.call(op, FILE, bytes(32))[0] == errno.ENOSYS


def _dirents(body: bytes, plus: bool) -> list[tuple[bytes, int, int, int]]:
    out, pos = [], 0
    while pos < len(body):
        if plus:
            nodeid = P.ENTRY_OUT.unpack_from(body, pos)[0]
            pos += P.ENTRY_SIZE
        else:
            nodeid = -1
        ino, off, namelen, typ = P.DIRENT.unpack_from(body, pos)
        name = body[pos + P.DIRENT.size : pos + P.DIRENT.size + namelen]
        pos += (P.DIRENT.size + namelen + 7) & ~7
        out.append((name, ino if not plus else nodeid, off, typ))
    return out


@pytest.mark.parametrize("plus", [False, True])
def test_readdir_pages_resume_at_offsets(wire, plus):
    op = P.Opcode.READDIRPLUS if plus else P.Opcode.READDIR
    names, offset, pages = [], 0, 0
    while True:
        err, body = wire.call(op, DIR, _read_in(DIR, offset, 4096))
        assert err == 0 and len(body) <= 4096
        if not body:
            break
        recs = _dirents(body, plus)
        names += [r[0] for r in recs]
        offset = recs[-1][2]
        pages += 1
    assert names == [b".", b".."] + [f"f{i}".encode() for i in range(MANY)]
    assert pages > 1  # the 4 KiB limit was honoured
    err, body = wire.call(op, ROOT, _read_in(ROOT, 0, 4096))
    recs = {r[0]: r for r in _dirents(body, plus)}
    assert recs[b"link"][3] == stat.S_IFLNK >> 12 and recs[b"dir"][3] == stat.S_IFDIR >> 12
    assert recs[b"file"][1] == FILE


def test_xattr_size_probe_value_and_erange(wire):
    args = P.GETXATTR_IN.pack(0, 0) + b"user.big\0"
    assert wire.call(P.Opcode.GETXATTR, FILE, args) == (0, P.size_out(300))
    args = P.GETXATTR_IN.pack(400, 0) + b"user.big\0"
    assert wire.call(P.Opcode.GETXATTR, FILE, args) == (0, b"x" * 300)
    args = P.GETXATTR_IN.pack(10, 0) + b"user.big\0"
    assert wire.call(P.Opcode.GETXATTR, FILE, args)[0] == errno.ERANGE
    args = P.GETXATTR_IN.pack(10, 0) + b"user.none\0"
    assert wire.call(P.Opcode.GETXATTR, FILE, args)[0] == errno.ENODATA
    names = b"user.big\0user.one\0"
    assert wire.call(P.Opcode.LISTXATTR, FILE, P.GETXATTR_IN.pack(0, 0)) == (
        0,
        P.size_out(len(names)),
    )
    assert wire.call(P.Opcode.LISTXATTR, FILE, P.GETXATTR_IN.pack(100, 0)) == (0, names)
    assert wire.call(P.Opcode.LISTXATTR, FILE, P.GETXATTR_IN.pack(5, 0))[0] == errno.ERANGE


def test_handler_errors_become_errnos_and_a_bug_is_logged(wire, caplog):
    assert wire.call(P.Opcode.READ, BAD, _read_in(BAD, 0, 10))[0] == errno.EIO
    with caplog.at_level(logging.ERROR, logger="nydus.fuse.session"):
        assert wire.call(P.Opcode.READ, BOOM, _read_in(BOOM, 0, 10))[0] == errno.EIO
    rec = [r for r in caplog.records if "unexpected error in read" in r.getMessage()]
    assert rec and rec[0].exc_info and "a bug in the filesystem" in str(rec[0].exc_info[1])
    # a malformed request (arguments cut short) is an error reply, not a dead reader
    assert wire.call(P.Opcode.READ, FILE, b"\0" * 4)[0] == errno.EIO


def test_a_reply_that_cannot_be_sent_is_eio_and_logged(wire, caplog, monkeypatch):
    """A handler result the session cannot encode (a bug) is answered EIO, never left
    without an answer (the kernel's caller would hang) and never kills the reader."""
    monkeypatch.setattr(wire.fs, "readlink", lambda node: "file")  # str, not bytes
    with caplog.at_level(logging.ERROR, logger="nydus.fuse.session"):
        assert wire.call(P.Opcode.READLINK, LINK)[0] == errno.EIO
    rec = [r for r in caplog.records if "unexpected error in readlink" in r.getMessage()]
    assert rec and rec[0].exc_info
    assert wire.call(P.Opcode.READ, FILE, _read_in(FILE, 0, 3)) == (0, CONTENT[:3])


def test_forget_has_no_reply(wire):
    wire.send(P.Opcode.FORGET, FILE, P.FORGET_IN.pack(3))
    wire.send(
        P.Opcode.BATCH_FORGET,
        0,
        P.BATCH_FORGET_IN.pack(2, 0) + P.FORGET_ONE.pack(5, 1) + P.FORGET_ONE.pack(6, 2),
    )
    assert wire.nothing_pending()
    assert wire.fs.forgotten == [(FILE, 3), (5, 1), (6, 2)]


def test_interrupt_answers_a_waiting_read_with_eintr_and_drops_the_late_result(wire):
    u = wire.send(P.Opcode.READ, SLOW, _read_in(SLOW, 0, 10))
    assert wire.fs.slow_started.wait(5)
    t0 = time.monotonic()
    wire.send(P.Opcode.INTERRUPT, 0, P.INTERRUPT_IN.pack(u))
    unique, err, _ = wire.reply()
    assert (unique, err) == (u, errno.EINTR) and time.monotonic() - t0 < 2
    wire.fs.slow_release.set()  # the backend answers late: nothing more is sent
    assert wire.nothing_pending()
    # an INTERRUPT for a request already answered (or unknown) is ignored
    wire.send(P.Opcode.INTERRUPT, 0, P.INTERRUPT_IN.pack(12345))
    assert wire.nothing_pending()
    assert wire.call(P.Opcode.READ, FILE, _read_in(FILE, 0, 3)) == (0, CONTENT[:3])
