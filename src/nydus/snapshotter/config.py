"""containerd-nydus-grpc's settings: upstream's TOML config (interfaces.md §7.1) where its
keys apply, overridden by the command-line flags. Keys of sections we do not implement
(`[metrics]`, `[cgroup]`, `[remote.auth]`, `[experimental]`...) are accepted and ignored with a
debug line; a wrong value for a key we use is a `ConfigError` naming it."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nydus.errors import ConfigError

__all__ = ["SnapshotterConfig", "load_toml"]

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/containerd/io.containerd.snapshotter.v1.nydus"
DEFAULT_ADDRESS = "/run/containerd-nydus/containerd-nydus-grpc.sock"
DEFAULT_NYDUSD_CONFIG = "/etc/nydus/nydusd-config.json"
DAEMON_MODES = {"dedicated": "dedicated", "multiple": "dedicated", "shared": "shared"}
RECOVER_POLICIES = ("none", "restart")


@dataclass(frozen=True, slots=True)
class SnapshotterConfig:
    root: str = DEFAULT_ROOT
    address: str = DEFAULT_ADDRESS
    daemon_mode: str = "dedicated"  # dedicated | shared
    fs_driver: str = "fusedev"
    nydusd_path: str = ""  # empty: `nydusd` beside this interpreter, else on PATH
    nydus_image_path: str = ""
    nydusd_config: str = DEFAULT_NYDUSD_CONFIG
    log_level: str = "info"
    log_to_stdout: bool = False
    recover_policy: str = "restart"
    threads_number: int = 4
    cleanup_on_close: bool = False
    enable_overlayfs_volatile: bool = False
    cache_dir: str = ""  # empty: <root>/cache
    daemon_ready_timeout: float = 30.0

    @property
    def cache(self) -> str:
        return self.cache_dir or str(Path(self.root) / "cache")

    def validated(self) -> SnapshotterConfig:
        mode = DAEMON_MODES.get(self.daemon_mode)
        if mode is None:
            raise ConfigError(
                f"daemon mode {self.daemon_mode!r} is not supported (dedicated, multiple, shared)"
            )
        if self.fs_driver != "fusedev":
            raise ConfigError(f"fs driver {self.fs_driver!r} is not supported (fusedev)")
        if self.recover_policy not in RECOVER_POLICIES:
            raise ConfigError(
                f"recover_policy {self.recover_policy!r} is not supported (none, restart)"
            )
        if not 1 <= self.threads_number <= 1024:
            raise ConfigError(f"threads_number {self.threads_number} must be 1..1024")
        if not self.root.startswith("/"):
            raise ConfigError(f"root {self.root!r} must be an absolute path")
        if not self.address.startswith("/"):
            raise ConfigError(f"address {self.address!r} must be an absolute socket path")
        return replace(self, daemon_mode=mode)


def _get(section: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in section:
        return None
    v = section[key]
    if (kind is int and isinstance(v, bool)) or not isinstance(v, kind):
        raise ConfigError(f"{where}{key} must be {kind.__name__}, not {type(v).__name__}")
    return v


_KEYS: dict[str, list[tuple[str, str, type]]] = {
    # section: (toml key, field, type)
    "": [
        ("root", "root", str),
        ("address", "address", str),
        ("daemon_mode", "daemon_mode", str),
        ("cleanup_on_close", "cleanup_on_close", bool),
    ],
    "daemon": [
        ("nydusd_config", "nydusd_config", str),
        ("nydusd_path", "nydusd_path", str),
        ("nydusimage_path", "nydus_image_path", str),
        ("fs_driver", "fs_driver", str),
        ("recover_policy", "recover_policy", str),
        ("threads_number", "threads_number", int),
    ],
    "log": [("level", "log_level", str), ("log_to_stdout", "log_to_stdout", bool)],
    "snapshot": [("enable_overlayfs_volatile", "enable_overlayfs_volatile", bool)],
    "cache_manager": [("cache_dir", "cache_dir", str)],
}


def load_toml(path: str, base: SnapshotterConfig | None = None) -> SnapshotterConfig:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    version = doc.get("version", 1)
    if version != 1:
        raise ConfigError(f"config {path}: version {version!r} is not supported (1)")
    values: dict[str, Any] = {}
    for section, keys in _KEYS.items():
        table = doc if not section else doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config {path}: [{section}] must be a table")
        where = f"config {path}: {section + '.' if section else ''}"
        for key, fld, kind in keys:
            v = _get(table, key, kind, where)
            if v is not None and v != "":
                values[fld] = v
    for section in doc:
        if isinstance(doc[section], dict) and section not in _KEYS:
            log.debug("config %s: section [%s] is not used", path, section)
    return replace(base or SnapshotterConfig(), **values)
