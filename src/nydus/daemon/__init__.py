"""nydusd: daemon state, the service holding mounts and metrics, the HTTP API, the process."""

from nydus.daemon.api import ApiServer
from nydus.daemon.lifecycle import run_daemon
from nydus.daemon.service import DaemonOptions, NydusDaemon, RafsMount, load_bootstrap
from nydus.daemon.state import DaemonState, StateMachine

__all__ = [
    "ApiServer",
    "DaemonOptions",
    "DaemonState",
    "NydusDaemon",
    "RafsMount",
    "StateMachine",
    "load_bootstrap",
    "run_daemon",
]
