"""Daemon life-cycle states as the API reports them: INIT -> READY -> RUNNING -> STOPPED."""

from __future__ import annotations

import enum
import threading

from nydus.errors import NydusError

__all__ = ["DaemonState", "StateMachine"]


class DaemonState(enum.Enum):
    INIT = "INIT"
    READY = "READY"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"


_ALLOWED = {
    DaemonState.INIT: {DaemonState.READY, DaemonState.STOPPED},
    DaemonState.READY: {DaemonState.RUNNING, DaemonState.STOPPED},
    DaemonState.RUNNING: {DaemonState.STOPPED},
    DaemonState.STOPPED: set(),
    DaemonState.UNKNOWN: set(DaemonState),
}


class StateMachine:
    def __init__(self) -> None:
        self._state = DaemonState.INIT
        self._lock = threading.Lock()

    @property
    def state(self) -> DaemonState:
        return self._state

    def to(self, new: DaemonState) -> None:
        with self._lock:
            if new is self._state:
                return
            if new not in _ALLOWED[self._state]:
                raise NydusError(f"daemon cannot go from {self._state.value} to {new.value}")
            self._state = new
