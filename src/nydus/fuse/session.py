"""A FUSE server of our own over /dev/fuse: mount, read requests, dispatch, reply, unmount.

Threads, no event loop: `readers` threads read requests from the one /dev/fuse descriptor
and answer every request inline except reads that may block (a backend fetch), which go
to a pool of `threads` workers, so a slow fetch never stalls metadata. An INTERRUPT for
a read still waiting in the pool answers it with EINTR at once (a killed reader does not
wait for the backend); the late result is dropped.

Every handler error becomes an errno reply: a NydusError's own errno, an OSError's errno,
anything else EIO with its traceback logged. Nothing escapes a handler.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from nydus.errors import NydusError
from nydus.fuse import protocol as P
from nydus.fuse.ops import Operations
from nydus.kernel.mounts import (
    MS_NOATIME,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MountError,
    mount_device,
    unmount,
)
from nydus.kernel.mounts import mount as kernel_mount

__all__ = ["READAHEAD_KB", "FuseError", "FuseSession", "mount_options"]

log = logging.getLogger(__name__)
_opname = P.opcode_name
T = TypeVar("T")

#: read-ahead window of the mount, KiB (sequential reads arrive as requests this large)
READAHEAD_KB = 1024
#: pages per FUSE request (256 = 1 MiB reads; the kernel caps it at fuse.max_pages_limit)
MAX_PAGES = 256
MAX_WRITE = 32 * 1024
#: request buffer: the kernel wants room for a write of max_write and its headers
BUFFER_SIZE = MAX_WRITE + 8192
MAX_BACKGROUND = 64
#: how the connection ends: the mount was removed or the connection aborted
_GONE = (errno.ENODEV, errno.EBADF)


class FuseError(NydusError):
    """The FUSE mount could not be set up."""


def _allow_other_permitted() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options(fsname: str = "nydusfs", allow_other: bool | None = None) -> set[str]:
    """The options shown for the mount (besides fd, rootmode, user_id and group_id)."""
    opts = {"default_permissions", f"fsname={fsname}", "ro"}
    if _allow_other_permitted() if allow_other is None else allow_other:
        opts.add("allow_other")
    return opts


def tune_readahead(dev: str | None, kb: int = READAHEAD_KB) -> None:
    """Raise the mount's read-ahead window (the kernel starts FUSE mounts at 128 KiB).
    Best effort: needs root."""
    if dev is None:
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path) as f:
            current = int(f.read().strip() or 0)
        if current < kb:
            with open(path, "w") as f:
                f.write(f"{kb}\n")
    except (OSError, ValueError) as exc:
        log.debug("cannot tune read-ahead of %s: %s", dev, exc)


def _fusermount(mountpoint: str, opts: str) -> int:
    """Mount through the setuid fusermount3 (for non-root users); it passes the /dev/fuse
    descriptor back over a socket."""
    import socket
    import subprocess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        try:
            r = subprocess.run(
                ["fusermount3", "-o", opts, "--", mountpoint],
                env=env,
                pass_fds=(theirs.fileno(),),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise FuseError(f"cannot mount FUSE at {mountpoint}: fusermount3: {exc}") from exc
        theirs.close()
        if r.returncode != 0:
            raise FuseError(
                f"cannot mount FUSE at {mountpoint}: fusermount3: {r.stderr.strip() or r.returncode}"
            )
        _msg, anc, _flags, _addr = ours.recvmsg(1, socket.CMSG_SPACE(4))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
                return int.from_bytes(data[:4], "little")
        raise FuseError(f"cannot mount FUSE at {mountpoint}: fusermount3 sent no descriptor")
    finally:
        ours.close()
        theirs.close()


class _Request:
    __slots__ = ("nodeid", "opcode", "unique")

    def __init__(self, opcode: int, unique: int, nodeid: int) -> None:
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid


class FuseSession:
    """One FUSE mount served by `ops`: `mount()` starts serving; `close()` unmounts.

    `ended` is set when the connection ends (unmounted from outside, or aborted). The
    /dev/fuse descriptor stays open until the process exits: a worker still finishing a
    read must never write its reply into a reused descriptor number.
    """

    def __init__(
        self,
        ops: Operations,
        mountpoint: str,
        threads: int = 4,
        fsname: str = "nydusfs",
        *,
        readers: int = 2,
        allow_other: bool | None = None,
        readahead_kb: int = READAHEAD_KB,
    ) -> None:
        self.ops = ops
        self.mountpoint = os.path.abspath(mountpoint)
        self.threads = max(1, threads)
        self.readers = max(1, readers)
        self.fsname = fsname
        self.options = mount_options(fsname, allow_other)
        self.readahead_kb = readahead_kb
        self.fd = -1
        self.mounted = False
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.on_end: Callable[[], None] | None = None
        self.kernel_minor = 0
        self._fusermount = False
        self._work: queue.SimpleQueue[tuple[_Request, int, int, int] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._workers_lock = threading.Lock()
        self._pending: set[int] = set()  # uniques of reads queued or running in the pool
        self._pending_lock = threading.Lock()
        self._closing = False
        self._handlers: dict[int, Callable[[_Request, memoryview], bytes | None]] = {
            P.Opcode.INIT: self._init,
            P.Opcode.LOOKUP: self._lookup,
            P.Opcode.GETATTR: self._getattr,
            P.Opcode.READLINK: self._readlink,
            P.Opcode.OPEN: self._open,
            P.Opcode.READ: self._read,
            P.Opcode.RELEASE: self._release,
            P.Opcode.OPENDIR: self._opendir,
            P.Opcode.READDIR: self._readdir,
            P.Opcode.READDIRPLUS: self._readdirplus,
            P.Opcode.RELEASEDIR: self._releasedir,
            P.Opcode.STATFS: self._statfs,
            P.Opcode.GETXATTR: self._getxattr,
            P.Opcode.LISTXATTR: self._listxattr,
            P.Opcode.ACCESS: self._access,
            P.Opcode.DESTROY: self._destroy,
        }

    # ---- mount / unmount -----------------------------------------------------------------
    def mount(self) -> None:
        """Mount at `mountpoint` and start answering the kernel."""
        if not os.path.isdir(self.mountpoint):
            raise FuseError(f"mountpoint {self.mountpoint} is not a directory")
        uid, gid = os.geteuid(), os.getegid()
        shown = sorted(o for o in self.options if not o.startswith("fsname="))
        order = {"default_permissions": 0, "allow_other": 1}
        shown.sort(key=lambda o: (order.get(o, 2), o))
        if uid == 0:
            try:
                fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise FuseError(f"cannot open /dev/fuse: {exc.strerror}") from exc
            rootmode = stat.S_IFMT(os.stat(self.mountpoint).st_mode) | 0
            data = ",".join(
                [o for o in shown if o != "ro"]
                + [f"fd={fd}", f"rootmode={rootmode:o}", f"user_id={uid}", f"group_id={gid}"]
            )
            try:
                kernel_mount(
                    self.fsname,
                    self.mountpoint,
                    "fuse",
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME,
                    data,
                )
            except MountError as exc:
                os.close(fd)
                raise FuseError(f"cannot mount FUSE at {self.mountpoint}: {exc}") from exc
        else:
            fd = _fusermount(
                self.mountpoint,
                ",".join([*shown, "nosuid", "nodev", "noatime", f"fsname={self.fsname}"]),
            )
            self._fusermount = True
            rootmode = stat.S_IFDIR
        self.fd = fd
        self.mounted = True
        log.info(
            "mount source %s dest %s with fstype fuse opts %s,fd=%d,rootmode=%o,"
            "user_id=%d,group_id=%d fd %d",
            self.fsname,
            self.mountpoint,
            ",".join(shown),
            fd,
            rootmode,
            uid,
            gid,
            fd,
        )
        for i in range(self.readers):
            threading.Thread(target=self._reader, name=f"fuse-reader-{i}", daemon=True).start()

    def close(self) -> None:
        """Unmount (lazily when files are still open), then end the connection so that
        nothing waits on this server any more. Safe to call twice."""
        if not self.mounted:
            return
        self.mounted = False
        self._closing = True
        try:
            if self._fusermount:
                import subprocess

                subprocess.run(
                    ["fusermount3", "-u", "-z", "--", self.mountpoint],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
            else:
                try:
                    unmount(self.mountpoint)
                except MountError as exc:
                    if exc.errno != errno.EBUSY:
                        if exc.errno != errno.EINVAL:  # EINVAL: not mounted any more
                            raise
                    else:
                        # files are open: abort the connection (they get ENOTCONN, nothing
                        # waits on this server), then detach the mount
                        log.info("%s is busy: aborting and detaching it", self.mountpoint)
                        try:
                            unmount(self.mountpoint, force=True)
                        except MountError as exc2:
                            if exc2.errno != errno.EBUSY:
                                raise
                            unmount(self.mountpoint, lazy=True)
        except (MountError, OSError) as exc:
            log.warning("unmounting %s failed: %s", self.mountpoint, exc)
        for _ in self._workers:
            self._work.put(None)

    # ---- request loop --------------------------------------------------------------------
    def _reader(self) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        fd = self.fd
        while True:
            try:
                n = os.readv(fd, [buf])
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # interrupted, or a request the kernel took back
                if exc.errno not in _GONE:
                    log.error("reading /dev/fuse failed: %s", exc)
                break
            if n < P.IN_HEADER.size:
                continue
            try:
                self._dispatch(view[:n])
            except Exception:  # a bug in a reply: the reader must live on
                log.exception("unexpected error answering a FUSE request")
        self._ended()

    def _ended(self) -> None:
        if not self.ended.is_set():
            self.ended.set()
            if not self._closing:
                log.info("fuse session ended (filesystem unmounted)")
            cb = self.on_end
            if cb is not None:
                cb()

    def _dispatch(self, msg: memoryview) -> None:
        _len, opcode, unique, nodeid, _uid, _gid, _pid, _ext, _pad = P.IN_HEADER.unpack_from(msg)
        args = msg[P.IN_HEADER.size :]
        req = _Request(opcode, unique, nodeid)
        if opcode in P.NO_REPLY_OPCODES:
            self._no_reply(req, args)
            return
        handler = self._handlers.get(opcode)
        if handler is None:
            self._error(unique, errno.EROFS if opcode in P.WRITE_OPCODES else errno.ENOSYS)
            return
        body, err = self._run(req, handler, req, args)
        if not err and body is not None:
            _, err = self._run(req, self._reply, unique, body)  # a reply that cannot be sent
        if err:
            self._error(unique, err)

    def _run(self, req: _Request, fn: Callable[..., T], *args: Any) -> tuple[T | None, int]:
        """The one place a request's handler runs (inline, in the read pool, or without a
        reply): (its result, 0), or (None, the errno its failure answers). Nothing escapes:
        a failure that is no NydusError or OSError is a bug, logged at ERROR with its
        traceback and answered EIO, and the session goes on."""
        try:
            return fn(*args), 0
        except Exception as exc:  # noqa: BLE001 - every failure is an errno reply
            return None, self._errno_of(req, exc)

    def _errno_of(self, req: _Request, exc: BaseException) -> int:
        if isinstance(exc, NydusError):
            if exc.errno not in (errno.ENOENT, errno.ENODATA):
                log.debug("%s(node %d): %s", _opname(req.opcode), req.nodeid, exc)
            return exc.errno or errno.EIO
        if isinstance(exc, OSError) and exc.errno:
            log.debug("%s(node %d): %s", _opname(req.opcode), req.nodeid, exc)
            return exc.errno
        log.error("unexpected error in %s(node %d)", _opname(req.opcode), req.nodeid, exc_info=exc)
        return errno.EIO

    def _send(self, parts: list[Any]) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as exc:
            # ENOENT: the request was interrupted and forgotten; ENODEV: connection gone
            if exc.errno not in (errno.ENOENT, *_GONE):
                log.warning("writing a FUSE reply failed: %s", exc)

    def _reply(self, unique: int, body: bytes | memoryview = b"") -> None:
        self._send([P.OUT_HEADER.pack(P.OUT_HEADER.size + len(body), 0, unique), body])

    def _error(self, unique: int, err: int) -> None:
        self._send([P.OUT_HEADER.pack(P.OUT_HEADER.size, -err, unique)])

    def _no_reply(self, req: _Request, args: memoryview) -> None:
        self._run(req, self._no_reply_op, req, args)

    def _no_reply_op(self, req: _Request, args: memoryview) -> None:
        if req.opcode == P.Opcode.FORGET:
            (n,) = P.FORGET_IN.unpack_from(args)
            self.ops.forget([(req.nodeid, n)])
        elif req.opcode == P.Opcode.BATCH_FORGET:
            count, _ = P.BATCH_FORGET_IN.unpack_from(args)
            size = P.FORGET_ONE.size
            base = P.BATCH_FORGET_IN.size
            items = [
                P.FORGET_ONE.unpack_from(args, base + i * size)
                for i in range(min(count, (len(args) - base) // size))
            ]
            self.ops.forget(items)
        elif req.opcode == P.Opcode.INTERRUPT:
            (target,) = P.INTERRUPT_IN.unpack_from(args)
            with self._pending_lock:
                found = target in self._pending
                self._pending.discard(target)
            if found:
                self._error(target, errno.EINTR)

    # ---- worker pool for blocking reads ----------------------------------------------------
    def _submit(self, req: _Request, fh: int, offset: int, size: int) -> None:
        with self._pending_lock:
            self._pending.add(req.unique)
        if len(self._workers) < self.threads:
            with self._workers_lock:
                if len(self._workers) < self.threads:
                    t = threading.Thread(
                        target=self._worker, name=f"fuse-worker-{len(self._workers)}", daemon=True
                    )
                    self._workers.append(t)
                    t.start()
        self._work.put((req, fh, offset, size))

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            req, fh, offset, size = item
            with self._pending_lock:
                wanted = req.unique in self._pending
            if not wanted:
                continue  # interrupted while queued
            data, err = self._run(req, self.ops.read, fh, offset, size)
            with self._pending_lock:
                wanted = req.unique in self._pending
                self._pending.discard(req.unique)
            if not wanted:
                continue
            if not err:
                _, err = self._run(req, self._reply, req.unique, data or b"")
            if err:
                self._error(req.unique, err)

    # ---- handlers (return the reply body, or None when already answered) ------------------
    def _init(self, req: _Request, args: memoryview) -> bytes | None:
        major, minor, max_readahead, kflags = P.INIT_IN.unpack_from(args)
        if major < P.KERNEL_MAJOR:
            log.error("kernel FUSE protocol %d.%d is too old", major, minor)
            raise FuseError("protocol too old") from None
        if major > P.KERNEL_MAJOR:  # the kernel retries with our major
            return P.INIT_OUT.pack(P.KERNEL_MAJOR, P.KERNEL_MINOR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self.kernel_minor = minor
        want = (
            P.InitFlags.ASYNC_READ
            | P.InitFlags.DO_READDIRPLUS
            | P.InitFlags.PARALLEL_DIROPS
            | P.InitFlags.MAX_PAGES
            | P.InitFlags.CACHE_SYMLINKS
            | P.InitFlags.EXPLICIT_INVAL_DATA
        )
        reply = P.InitReply(
            max_readahead=min(max_readahead, self.readahead_kb * 1024),
            flags=want & kflags,
            max_background=MAX_BACKGROUND,
            congestion_threshold=MAX_BACKGROUND * 3 // 4,
            max_write=MAX_WRITE,
            max_pages=MAX_PAGES,
        )
        self._reply(req.unique, P.init_out(minor, reply))
        # the kernel has applied the reply when the write returns: tune the new mount
        if os.geteuid() == 0:
            tune_readahead(mount_device(self.mountpoint), self.readahead_kb)
        self.ready.set()
        return None

    def _lookup(self, req: _Request, args: memoryview) -> bytes:
        name = bytes(args).split(b"\0", 1)[0]
        ops = self.ops
        found = ops.lookup(req.nodeid, name)
        timeout = ops.entry_timeout_for(req.nodeid)
        if found is None:
            return P.entry_out(0, None, timeout, timeout)
        nodeid, attr = found
        return P.entry_out(nodeid, attr, timeout, timeout)

    def _getattr(self, req: _Request, args: memoryview) -> bytes:
        return P.attr_out(self.ops.getattr(req.nodeid), self.ops.attr_timeout_for(req.nodeid))

    def _readlink(self, req: _Request, args: memoryview) -> bytes:
        return self.ops.readlink(req.nodeid)

    def _open(self, req: _Request, args: memoryview) -> bytes:
        flags, _ = P.OPEN_IN.unpack_from(args)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, "read-only filesystem")
        fh, oflags = self.ops.open(req.nodeid, flags)
        return P.open_out(fh, oflags)

    def _read(self, req: _Request, args: memoryview) -> bytes | None:
        fh, offset, size, _ = P.READ_IN.unpack_from(args)
        data = self.ops.read_nowait(fh, offset, size)
        if data is not None:
            return data
        self._submit(req, fh, offset, size)
        return None

    def _release(self, req: _Request, args: memoryview) -> bytes:
        fh, _, _ = P.RELEASE_IN.unpack_from(args)
        self.ops.release(fh)
        return b""

    def _opendir(self, req: _Request, args: memoryview) -> bytes:
        fh, oflags = self.ops.opendir(req.nodeid)
        return P.open_out(fh, oflags)

    def _dir(self, req: _Request, args: memoryview, plus: bool) -> bytes:
        fh, offset, size, _ = P.READ_IN.unpack_from(args)
        ops = self.ops
        out: list[bytes] = []
        used = 0
        timeout = ops.dir_timeout_for(fh) if plus else 0.0
        records = ops.readdir(fh, offset, plus)
        try:
            for name, nodeid, attr, next_offset in records:
                if plus:
                    rec = P.direntplus(nodeid, attr, next_offset, name, timeout, timeout)
                else:
                    rec = P.dirent(attr.ino, next_offset, attr.mode, name)
                if used + len(rec) > size:
                    break
                out.append(rec)
                used += len(rec)
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
        return b"".join(out)

    def _readdir(self, req: _Request, args: memoryview) -> bytes:
        return self._dir(req, args, False)

    def _readdirplus(self, req: _Request, args: memoryview) -> bytes:
        return self._dir(req, args, True)

    def _releasedir(self, req: _Request, args: memoryview) -> bytes:
        fh, _, _ = P.RELEASE_IN.unpack_from(args)
        self.ops.releasedir(fh)
        return b""

    def _statfs(self, req: _Request, args: memoryview) -> bytes:
        st = self.ops.statfs()
        return P.statfs_out(
            st.blocks, st.bfree, st.bavail, st.files, st.ffree, st.bsize, st.namemax, st.frsize
        )

    def _getxattr(self, req: _Request, args: memoryview) -> bytes:
        size, _ = P.GETXATTR_IN.unpack_from(args)
        name = bytes(args[P.GETXATTR_IN.size :]).split(b"\0", 1)[0]
        value = self.ops.getxattr(req.nodeid, name)
        if size == 0:
            return P.size_out(len(value))
        if len(value) > size:
            raise OSError(errno.ERANGE, "xattr value larger than the buffer")
        return value

    def _listxattr(self, req: _Request, args: memoryview) -> bytes:
        size, _ = P.GETXATTR_IN.unpack_from(args)
        names = b"".join(n + b"\0" for n in self.ops.listxattr(req.nodeid))
        if size == 0:
            return P.size_out(len(names))
        if len(names) > size:
            raise OSError(errno.ERANGE, "xattr names larger than the buffer")
        return names

    def _access(self, req: _Request, args: memoryview) -> bytes:
        mask, _ = P.ACCESS_IN.unpack_from(args)
        if mask & os.W_OK:
            raise OSError(errno.EROFS, "read-only filesystem")
        self.ops.access(req.nodeid, mask)
        return b""

    def _destroy(self, req: _Request, args: memoryview) -> bytes:
        return b""
