"""Fixtures of the snapshotter tests: a `containerd-nydus-grpc` process on a private root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.snapshotter.client import SnapshotsClient, SnapshotterProcess, start_snapshotter
from tests.snapshotter.env import stop_daemons


@pytest.fixture
def snapshotter_proc(tmp_path: Path) -> Iterator[SnapshotterProcess]:
    sp = start_snapshotter(tmp_path / "sn")
    yield sp
    sp.stop()
    stop_daemons(sp.root)


@pytest.fixture
def client(snapshotter_proc: SnapshotterProcess) -> SnapshotsClient:
    assert snapshotter_proc.client is not None
    return snapshotter_proc.client
