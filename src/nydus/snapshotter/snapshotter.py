"""The snapshotter's logic behind the Snapshots gRPC calls, FUSE- and gRPC-free.

Plain OCI layers behave as containerd's own overlayfs snapshotter: each snapshot owns
`snapshots/<id>/fs` (and `work` when active); an active snapshot mounts as an overlay of its
parents' `fs` dirs with its own `fs` as upper (a bind mount without parents). Nydus images
(interfaces.md §7.3): a data-blob layer is committed empty and answered with
`SnapshotExists` (containerd then skips fetching it); the bootstrap layer is unpacked by
containerd like any layer; a container's snapshot above a bootstrap layer gets the image's
nydusd mountpoint (from `ImageMounts`) as its lowerdir.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nydus.kernel.mounts import mountpoints_under, unmount_all
from nydus.snapshotter import labels as L
from nydus.snapshotter.errors import SnapshotError, SnapshotExists, SnapshotInvalid
from nydus.snapshotter.filters import compile_filters
from nydus.snapshotter.store import Info, Kind, MetaStore, Snapshot, Usage

__all__ = ["ImageMounts", "Mount", "Snapshotter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...]
    target: str = ""


class ImageMounts(Protocol):
    """What the snapshotter needs from the nydusd daemon manager."""

    def attach(self, meta_id: int, bootstrap_dir: Path, labels: Mapping[str, str]) -> str:
        """Make the image whose bootstrap layer is snapshot `meta_id` mounted; return the
        directory presenting its root filesystem."""
        ...

    def detach(self, meta_id: int) -> None:
        """The bootstrap snapshot `meta_id` is gone: unmount it (stop its dedicated nydusd)."""
        ...

    def attached(self) -> set[int]: ...

    def cleanup(self, live_meta_ids: set[int]) -> list[str]:
        """Drop what belongs to no live bootstrap snapshot (daemons, configs, cache files);
        return what was removed."""
        ...


def disk_usage(path: Path) -> Usage:
    """Bytes allocated and distinct inodes under `path` (containerd's fs.DiskUsage)."""
    size, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames, ""):
            p = os.path.join(dirpath, name) if name else dirpath
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            size += st.st_blocks * 512
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
    return Usage(size, len(seen))


class Snapshotter:
    """Snapshots under `root`; metadata in `root/metadata.db`."""

    def __init__(
        self,
        root: str | Path,
        images: ImageMounts | None = None,
        *,
        volatile: bool = False,
    ) -> None:
        self.root = Path(root)
        self.snapshots_dir = self.root / "snapshots"
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.store = MetaStore(self.root / "metadata.db")
        self.images = images
        self.volatile = volatile

    def close(self) -> None:
        self.store.close()

    # -- paths ---------------------------------------------------------------------------

    def dir_of(self, sid: int) -> Path:
        return self.snapshots_dir / str(sid)

    def fs_of(self, sid: int) -> Path:
        return self.dir_of(sid) / "fs"

    # -- creation ------------------------------------------------------------------------

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> Snapshot:
        """Row and directory together: nothing is left when either fails."""
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir))
        try:
            (tmp / "fs").mkdir(mode=0o755)
            if kind == Kind.ACTIVE:
                (tmp / "work").mkdir(mode=0o711)
            with self.store.transaction():
                snap = self.store.create(kind, key, parent, labels)
                os.rename(tmp, self.dir_of(snap.id))
            return snap
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        target = labels.get(L.TARGET_REF, "")
        if target and L.is_true(labels, L.NYDUS_BLOB) and self.images is not None:
            self._skip_layer(key, parent, target, labels)
        snap = self._create(Kind.ACTIVE, key, parent, labels)
        try:
            return self._mounts(snap, key, image_layer=bool(target))
        except BaseException:
            self._discard(key)
            raise

    def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        snap = self._create(Kind.VIEW, key, parent, labels)
        try:
            return self._mounts(snap, key, image_layer=False)
        except BaseException:
            self._discard(key)
            raise

    def _skip_layer(self, key: str, parent: str, target: str, labels: Mapping[str, str]) -> None:
        """A Nydus data-blob layer: commit an empty snapshot as `target` and answer
        AlreadyExists, so containerd neither fetches nor unpacks the layer."""
        try:
            self.store.info(target)
        except SnapshotError:
            snap = self._create(Kind.ACTIVE, key, parent, labels)
            try:
                self.store.commit(target, key, labels, Usage(0, 1))
            except BaseException:
                self._discard(key)
                raise
            log.debug("nydus data layer %s committed as %s (snapshot %d)", key, target, snap.id)
        raise SnapshotExists(f"target snapshot {target} already exists (nydus data layer)")

    def _discard(self, key: str) -> None:
        try:
            snap = self.store.remove(key)
        except SnapshotError:
            return
        self._remove_dir(snap.id)

    # -- mounts --------------------------------------------------------------------------

    def _meta_layer(self, snap: Snapshot) -> int | None:
        """The Nydus bootstrap layer in the snapshot's parent chain, if any."""
        if self.images is None:
            return None
        for pid in snap.parent_ids:
            if L.is_true(self.store.info_by_id(pid).labels, L.NYDUS_BOOTSTRAP):
                return pid
        return None

    def _mounts(self, snap: Snapshot, key: str, *, image_layer: bool) -> list[Mount]:
        parents = [str(self.fs_of(p)) for p in snap.parent_ids]
        meta = None if image_layer else self._meta_layer(snap)
        if meta is not None:
            # the image's nydusd mount is the whole flattened rootfs below the layers that
            # were committed on top of the bootstrap layer (e.g. a committed container)
            assert self.images is not None
            info = self.store.info_by_id(meta)
            lower = self.images.attach(meta, self.fs_of(meta), info.labels)
            parents = [*parents[: snap.parent_ids.index(meta)], lower]
        elif not parents:
            ro = "ro" if snap.kind == Kind.VIEW else "rw"
            return [Mount("bind", str(self.fs_of(snap.id)), (ro, "rbind"))]
        if snap.kind == Kind.VIEW:
            if len(parents) == 1:
                return [Mount("bind", parents[0], ("ro", "rbind"))]
            return [Mount("overlay", "overlay", ("lowerdir=" + ":".join(parents),))]
        return [self._overlay(snap, parents, self.store.info(key).labels)]

    def _overlay(self, snap: Snapshot, lowers: list[str], labels: Mapping[str, str]) -> Mount:
        d = self.dir_of(snap.id)
        opts = [f"workdir={d / 'work'}", f"upperdir={d / 'fs'}", "lowerdir=" + ":".join(lowers)]
        if self.volatile or L.OVERLAY_VOLATILE in labels:
            opts.append("volatile")
        return Mount("overlay", "overlay", tuple(opts))

    def mounts(self, key: str) -> list[Mount]:
        snap = self.store.get(key)
        if snap.kind == Kind.COMMITTED:
            raise SnapshotInvalid(f"snapshot {key} is committed and has no mounts")
        info = self.store.info(key)
        return self._mounts(snap, key, image_layer=L.TARGET_REF in info.labels)

    # -- the rest of the API -------------------------------------------------------------

    def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        snap = self.store.get(key)
        usage = disk_usage(self.fs_of(snap.id)) if snap.kind == Kind.ACTIVE else Usage(0, 0)
        self.store.commit(name, key, labels, usage)

    def remove(self, key: str) -> None:
        snap = self.store.get(key)
        if self.images is not None and snap.id in self.images.attached():
            self.store.remove(key)  # refuses while children exist: check before detaching
            self.images.detach(snap.id)
        else:
            self.store.remove(key)
        self._remove_dir(snap.id)

    def stat(self, key: str) -> Info:
        return self.store.info(key)

    def update(self, info: Info, paths: list[str]) -> Info:
        return self.store.update(info, paths)

    def usage(self, key: str) -> Usage:
        snap, used = self.store.usage(key)
        if snap.kind == Kind.ACTIVE:
            return disk_usage(self.fs_of(snap.id))
        return used

    def walk(self, filters: list[str]) -> list[Info]:
        match = compile_filters(filters)
        return [i for i in self.store.walk() if match(i)]

    def cleanup(self) -> list[str]:
        """Remove snapshot directories no snapshot owns, then what the daemon manager holds for
        bootstrap layers that are gone (daemons, configs, blob cache files)."""
        live = self.store.ids()
        removed = []
        for entry in sorted(os.listdir(self.snapshots_dir)):
            if entry.isdigit() and int(entry) in live:
                continue
            self._remove_path(self.snapshots_dir / entry)
            removed.append(str(self.snapshots_dir / entry))
        if self.images is not None:
            metas = {
                i.id
                for i in (self.store.get(n.name) for n in self.store.walk())
                if i.kind == Kind.COMMITTED
            }
            removed += self.images.cleanup(metas)
        return removed

    # -- removal of directories ----------------------------------------------------------

    def _remove_dir(self, sid: int) -> None:
        d = self.dir_of(sid)
        if not d.exists():
            return
        gone = self.snapshots_dir / f"rm-{sid}"
        try:
            os.rename(d, gone)
        except OSError as exc:
            log.warning("cannot move %s aside for removal: %s", d, exc.strerror)
            return
        self._remove_path(gone)

    def _remove_path(self, path: Path) -> None:
        """Remove a tree that may hold mountpoints (a stale nydusd mount): unmount them first
        and never descend into a filesystem that is still mounted."""
        for mp in mountpoints_under(path):  # deepest first
            unmount_all(mp)
        if mountpoints_under(path):
            log.warning("%s still holds mounts; left in place for the next Cleanup", path)
            return
        onexc: Callable[..., object] = _log_rm_error
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, onerror=onexc)
        else:
            os.unlink(path)


def _log_rm_error(func: object, path: str, exc_info: object) -> None:
    log.warning("cannot remove %s", path)
