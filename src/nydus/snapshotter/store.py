"""Snapshot metadata in sqlite3, with containerd's semantics (its bolt-backed
`snapshots/storage` package is the model): every snapshot has a numeric id (its directory
name, never reused), a key, a kind, an optional committed parent, labels and timestamps;
committed snapshots keep their usage. Active and view snapshots are addressed by their key,
committed ones by their name; one table holds both, keyed by that string.

Each public method is one transaction; `transaction()` groups several with the filesystem work
that goes with them (the caller rolls the directory back when the transaction fails).
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nydus.snapshotter.errors import (
    SnapshotExists,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotPrecondition,
)

__all__ = ["Info", "Kind", "MetaStore", "Snapshot", "Usage"]

MAX_LABEL_BYTES = 4096  # containerd: key + value of one label


class Kind(enum.IntEnum):
    """Numbers as containerd's `Kind` enum in the Snapshots API."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True, slots=True)
class Info:
    name: str
    parent: str
    kind: Kind
    created_ns: int
    updated_ns: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    kind: Kind
    parent_ids: tuple[int, ...]  # nearest parent first


@dataclass(frozen=True, slots=True)
class Usage:
    size: int
    inodes: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES snapshots(id),
  kind INTEGER NOT NULL,
  created_ns INTEGER NOT NULL,
  updated_ns INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS labels (
  id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (id, name)
);
CREATE TABLE IF NOT EXISTS records (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
"""


def _check_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        if not k:
            raise SnapshotInvalid("label with an empty name")
        if len(k.encode()) + len(v.encode()) > MAX_LABEL_BYTES:
            raise SnapshotInvalid(f"label {k!r} is longer than {MAX_LABEL_BYTES} bytes")


class MetaStore:
    """The metadata database at `path` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one); rolled back on error."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    # -- reads ---------------------------------------------------------------------------

    def _row(self, key: str) -> tuple[int, int, int | None]:
        if not key:
            raise SnapshotInvalid("snapshot key is empty")
        row = self._db.execute(
            "SELECT id, kind, parent_id FROM snapshots WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise SnapshotNotFound(f"snapshot {key} does not exist")
        return int(row[0]), int(row[1]), row[2]

    def _chain(self, parent_id: int | None) -> tuple[int, ...]:
        out: list[int] = []
        while parent_id is not None:
            out.append(parent_id)
            row = self._db.execute(
                "SELECT parent_id FROM snapshots WHERE id = ?", (parent_id,)
            ).fetchone()
            parent_id = row[0] if row else None
        return tuple(out)

    def get(self, key: str) -> Snapshot:
        """The snapshot `key` (active/view key or committed name) with its parent chain."""
        with self._lock:
            sid, kind, parent = self._row(key)
            return Snapshot(sid, Kind(kind), self._chain(parent))

    def _labels(self, sid: int) -> dict[str, str]:
        rows = self._db.execute("SELECT name, value FROM labels WHERE id = ?", (sid,))
        return {str(k): str(v) for k, v in rows}

    def _info_of(self, row: tuple[int, str, str | None, int, int, int]) -> Info:
        sid, key, parent, kind, created, updated = row
        return Info(key, parent or "", Kind(kind), created, updated, self._labels(sid))

    _INFO_SQL = (
        "SELECT s.id, s.key, p.key, s.kind, s.created_ns, s.updated_ns FROM snapshots s "
        "LEFT JOIN snapshots p ON p.id = s.parent_id"
    )

    def info(self, key: str) -> Info:
        with self._lock:
            sid, _, _ = self._row(key)
            row = self._db.execute(self._INFO_SQL + " WHERE s.id = ?", (sid,)).fetchone()
            return self._info_of(row)

    def info_by_id(self, sid: int) -> Info:
        with self._lock:
            row = self._db.execute(self._INFO_SQL + " WHERE s.id = ?", (sid,)).fetchone()
            if row is None:
                raise SnapshotNotFound(f"snapshot id {sid} does not exist")
            return self._info_of(row)

    def walk(self) -> list[Info]:
        with self._lock:
            rows = self._db.execute(self._INFO_SQL + " ORDER BY s.id").fetchall()
            return [self._info_of(r) for r in rows]

    def ids(self) -> dict[int, Kind]:
        with self._lock:
            return {int(i): Kind(k) for i, k in self._db.execute("SELECT id, kind FROM snapshots")}

    def usage(self, key: str) -> tuple[Snapshot, Usage]:
        with self._lock:
            snap = self.get(key)
            row = self._db.execute(
                "SELECT size, inodes FROM snapshots WHERE id = ?", (snap.id,)
            ).fetchone()
            return snap, Usage(int(row[0]), int(row[1]))

    def children(self, sid: int) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM snapshots WHERE parent_id = ?", (sid,)
            ).fetchone()
            return int(row[0])

    # -- writes --------------------------------------------------------------------------

    def create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> Snapshot:
        """A new active or view snapshot on the committed `parent` (or none)."""
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise SnapshotInvalid(f"snapshot kind {kind.name} cannot be created")
        _check_labels(labels)
        with self.transaction():
            if not key:
                raise SnapshotInvalid("snapshot key is empty")
            if self._db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
                raise SnapshotExists(f"snapshot {key} already exists")
            parent_id: int | None = None
            if parent:
                try:
                    parent_id, pkind, _ = self._row(parent)
                except SnapshotNotFound:
                    raise SnapshotNotFound(f"parent snapshot {parent} does not exist") from None
                if pkind != Kind.COMMITTED:
                    raise SnapshotPrecondition(
                        f"parent {parent} is not a committed snapshot ({Kind(pkind).name.lower()})"
                    )
            now = time.time_ns()
            cur = self._db.execute(
                "INSERT INTO snapshots (key, parent_id, kind, created_ns, updated_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, parent_id, int(kind), now, now),
            )
            sid = int(cur.lastrowid or 0)
            self._set_labels(sid, labels)
            return Snapshot(sid, kind, self._chain(parent_id))

    def _set_labels(self, sid: int, labels: Mapping[str, str]) -> None:
        self._db.execute("DELETE FROM labels WHERE id = ?", (sid,))
        self._db.executemany(
            "INSERT INTO labels (id, name, value) VALUES (?, ?, ?)",
            [(sid, k, v) for k, v in labels.items()],
        )

    def commit(self, name: str, key: str, labels: Mapping[str, str], usage: Usage) -> int:
        """Turn the active snapshot `key` into the committed `name`; its labels are replaced
        by `labels` (containerd does not inherit them). Returns the snapshot id."""
        _check_labels(labels)
        with self.transaction():
            if not name:
                raise SnapshotInvalid("committed snapshot name is empty")
            sid, kind, _ = self._row(key)
            if kind != Kind.ACTIVE:
                raise SnapshotPrecondition(
                    f"snapshot {key} is {Kind(kind).name.lower()}, only an active one can be "
                    "committed"
                )
            if self._db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                raise SnapshotExists(f"snapshot {name} already exists")
            self._db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, updated_ns = ?, size = ?, inodes = ? "
                "WHERE id = ?",
                (name, int(Kind.COMMITTED), time.time_ns(), usage.size, usage.inodes, sid),
            )
            self._set_labels(sid, labels)
            return sid

    def remove(self, key: str) -> Snapshot:
        with self.transaction():
            snap = self.get(key)
            n = self.children(snap.id)
            if n:
                raise SnapshotPrecondition(f"snapshot {key} has {n} child snapshot(s)")
            self._db.execute("DELETE FROM snapshots WHERE id = ?", (snap.id,))
            return snap

    def update(self, info: Info, paths: list[str]) -> Info:
        """Update the mutable fields (labels) of `info.name`; `paths` as containerd's field
        mask: empty = replace all labels, `labels` = replace all, `labels.<k>` = set or
        delete (when absent from `info.labels`) that one label."""
        _check_labels(info.labels)
        with self.transaction():
            sid, _, _ = self._row(info.name)
            current = self._labels(sid)
            if not paths:
                new = dict(info.labels)
            else:
                new = dict(current)
                for p in paths:
                    if p == "labels":
                        new = dict(info.labels)
                    elif p.startswith("labels."):
                        k = p[len("labels.") :]
                        if k in info.labels:
                            new[k] = info.labels[k]
                        else:
                            new.pop(k, None)
                    else:
                        raise SnapshotInvalid(f"cannot update {p!r} of snapshot {info.name}")
            self._set_labels(sid, new)
            self._db.execute(
                "UPDATE snapshots SET updated_ns = ? WHERE id = ?", (time.time_ns(), sid)
            )
            return self.info(info.name)

    # -- free-form records (daemon manager) -----------------------------------------------

    def records(self, prefix: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, value FROM records WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            )
            return {str(k): str(v) for k, v in rows}

    def put_record(self, name: str, value: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO records (name, value) VALUES (?, ?)", (name, value)
            )

    def drop_record(self, name: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM records WHERE name = ?", (name,))
