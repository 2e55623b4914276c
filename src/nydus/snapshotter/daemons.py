"""The nydusd manager: which daemon serves which Nydus image, started, watched, restarted and
stopped on the snapshotter's behalf (interfaces.md §7.4, §7.6).

dedicated mode: one nydusd per image (bootstrap snapshot `sid`), mounted at
`snapshots/<sid>/mnt`. shared mode: one nydusd mounted at `<root>/mnt`, each image attached with
`POST /api/v1/mount?mountpoint=/<sid>` and seen at `<root>/mnt/<sid>`.

Daemons and image attachments are records in the metadata database, so a restarted snapshotter
re-attaches to daemons that still run (and restarts those that do not). Each daemon's API socket
is watched; when a daemon hangs up, `recover_policy = "restart"` starts it again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nydus.daemon.client import ApiClient
from nydus.daemon.process import NydusdCommand, NydusdProcess, find_nydusd, start_nydusd
from nydus.errors import NydusError
from nydus.format.rafs import open_bootstrap
from nydus.kernel.mounts import unmount_all
from nydus.oci.auth import load_credentials
from nydus.oci.reference import Reference
from nydus.snapshotter import labels as L
from nydus.snapshotter.config import SnapshotterConfig
from nydus.snapshotter.errors import DaemonFailure, SnapshotInvalid
from nydus.snapshotter.nydusd import pid_alive, stop_pid, watch
from nydus.snapshotter.store import MetaStore

__all__ = ["DaemonManager", "blob_ids_of", "find_bootstrap", "nydusd_config"]

log = logging.getLogger(__name__)

SHARED_ID = "shared_daemon"
DEFAULT_TEMPLATE: dict[str, Any] = {
    "device": {
        "backend": {"type": "registry", "config": {"timeout": 30, "retry_limit": 2}},
        "cache": {"type": "blobcache", "config": {}},
    },
    "mode": "direct",
    "digest_validate": False,
    "iostats_files": False,
    "enable_xattr": True,
    "fs_prefetch": {"enable": False},
}


@dataclass
class DaemonRecord:
    id: str
    mode: str  # dedicated | shared
    mountpoint: str
    apisock: str
    log_file: str
    binary: str
    config: str = ""  # dedicated: the image's nydusd config
    bootstrap: str = ""  # dedicated: the image's bootstrap
    threads: int = 4
    log_level: str = "info"
    pid: int = 0

    def command(self) -> NydusdCommand:
        """Upstream's command line (§7.4.3): `nydusd fuse --config --bootstrap --mountpoint
        --apisock --log-level --thread-num --failover-policy`."""
        return NydusdCommand(
            self.mountpoint,
            self.bootstrap or None,
            apisock=self.apisock,
            config=self.config or None,
            log_level=self.log_level,
            threads=self.threads,
            extra=("--failover-policy", "resend"),
            binary=self.binary,
            subcommand="fuse",
        )


@dataclass
class ImageRecord:
    sid: int  # the bootstrap layer's snapshot id
    daemon: str
    bootstrap: str
    config_path: str
    lowerdir: str
    ref: str = ""


@dataclass
class _Live:
    record: DaemonRecord
    stop: threading.Event = field(default_factory=threading.Event)
    proc: NydusdProcess | None = None  # None: started by an earlier snapshotter process


def _api(sock: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    try:
        with ApiClient(sock, timeout) as c:
            return c.call(method, path, body)
    except NydusError as exc:
        raise DaemonFailure(f"nydusd API {sock}: {method} /api/{path}: {exc}") from exc


def find_bootstrap(fs_dir: Path) -> Path:
    """`fs/image/image.boot` (or legacy `fs/image.boot`) of a bootstrap layer, validated."""
    for cand in (fs_dir / "image" / "image.boot", fs_dir / "image.boot"):
        if cand.is_file():
            break
    else:
        raise SnapshotInvalid(f"nydus bootstrap layer {fs_dir.parent.name} has no image/image.boot")
    try:
        open_bootstrap(cand.read_bytes())
    except (NydusError, ValueError, IndexError) as exc:
        raise SnapshotInvalid(
            f"nydus bootstrap {cand} is not a valid RAFS bootstrap: {exc}"
        ) from exc
    return cand


def blob_ids_of(bootstrap: Path) -> list[str]:
    try:
        return [b.blob_id for b in open_bootstrap(bootstrap.read_bytes()).blobs]
    except (OSError, NydusError, ValueError, IndexError):
        return []


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def nydusd_config(
    template: str, cache_dir: str, sid: int, ref: Reference, labels: dict[str, str]
) -> dict[str, Any]:
    """The v1 JSON config of image `ref` (bootstrap snapshot `sid`) from the `--nydusd-config`
    template (a built-in default when the file is absent): registry host and repo from the
    reference, credentials from the pull labels, else the Docker config (a password without a
    user is a registry token), `device.id = /<sid>`, the blob cache in `cache_dir`."""
    tpl_path = Path(template)
    if tpl_path.is_file():
        try:
            doc = json.loads(tpl_path.read_text())
        except (OSError, ValueError) as exc:
            raise DaemonFailure(f"nydusd config template {tpl_path}: {exc}") from exc
    else:
        doc = json.loads(json.dumps(DEFAULT_TEMPLATE))
    if not isinstance(doc, dict) or not isinstance(doc.get("device"), dict):
        raise DaemonFailure(f"nydusd config template {tpl_path}: no `device` object (v1 JSON)")
    device = doc["device"]
    backend = device.setdefault("backend", {"type": "registry", "config": {}})
    bcfg = backend.setdefault("config", {})
    if backend.get("type", "registry") == "registry":
        backend["type"] = "registry"
        bcfg["host"] = ref.api_host
        bcfg["repo"] = ref.repo
        user, secret = labels.get(L.PULL_USERNAME, ""), labels.get(L.PULL_SECRET, "")
        if not (user or secret):
            creds = load_credentials(ref.host)
            if creds is not None:
                user, secret = creds.username, creds.password or creds.registry_token or ""
        if user:
            bcfg["auth"] = base64.b64encode(f"{user}:{secret}".encode()).decode()
        elif secret:
            bcfg["registry_token"] = secret
    device["id"] = f"/{sid}"
    cache = device.setdefault("cache", {"type": "blobcache", "config": {}})
    if cache.get("type"):
        cache.setdefault("config", {})["work_dir"] = cache_dir
    return doc


class DaemonManager:
    def __init__(self, cfg: SnapshotterConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)
        self.cache_dir = Path(cfg.cache)
        self._lock = threading.RLock()
        self._daemons: dict[str, _Live] = {}
        self._images: dict[int, ImageRecord] = {}
        self._closing = False
        self.store: MetaStore | None = None

    # -- records -------------------------------------------------------------------------

    def _store(self) -> MetaStore:
        assert self.store is not None, "DaemonManager.open() first"
        return self.store

    def _save_daemon(self, rec: DaemonRecord) -> None:
        self._store().put_record(f"daemon/{rec.id}", json.dumps(asdict(rec)))

    def _save_image(self, rec: ImageRecord) -> None:
        self._store().put_record(f"image/{rec.sid}", json.dumps(asdict(rec)))

    def open(self, store: MetaStore) -> None:
        """Load the records; re-attach to daemons still running, restart the others."""
        self.store = store
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for text in store.records("image/").values():
            rec = ImageRecord(**json.loads(text))
            self._images[rec.sid] = rec
        for text in store.records("daemon/").values():
            drec = DaemonRecord(**json.loads(text))
            live = _Live(drec)
            self._daemons[drec.id] = live
            if self._alive(drec):
                log.info("re-attached to nydusd %s (pid %d)", drec.id, drec.pid)
                self._watch(live)
            else:
                log.warning("nydusd %s (pid %d) is not running; restarting it", drec.id, drec.pid)
                try:
                    self._restart(live)
                except DaemonFailure as exc:
                    log.error("cannot restart nydusd %s: %s", drec.id, exc)

    def close(self, stop_daemons: bool) -> None:
        with self._lock:
            self._closing = True
            for live in list(self._daemons.values()):
                live.stop.set()
                if stop_daemons:
                    self._stop(live)

    def attached(self) -> set[int]:
        with self._lock:
            return set(self._images)

    # -- daemons -------------------------------------------------------------------------

    def _alive(self, rec: DaemonRecord) -> bool:
        if not pid_alive(rec.pid) or not os.path.exists(rec.apisock):
            return False
        with ApiClient(rec.apisock, 3.0) as c:
            return c.state() == "RUNNING"

    def _watch(self, live: _Live) -> None:
        live.stop = threading.Event()
        watch(live.record.apisock, lambda: self._on_hangup(live), live.stop)

    def _on_hangup(self, live: _Live) -> None:
        with self._lock:
            if self._closing or live.stop.is_set() or live.record.id not in self._daemons:
                return
            rec = live.record
            log.warning("nydusd %s (pid %d) hung up its API socket: it died", rec.id, rec.pid)
            if self.cfg.recover_policy != "restart":
                return
            try:
                self._restart(live)
            except DaemonFailure as exc:
                log.error("cannot restart nydusd %s: %s", rec.id, exc)

    def _start(self, live: _Live) -> None:
        rec = live.record
        unmount_all(rec.mountpoint)  # a dead daemon's FUSE mount: not connected
        Path(rec.mountpoint).mkdir(parents=True, exist_ok=True)
        Path(rec.apisock).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        logf = Path(rec.log_file)
        logf.parent.mkdir(parents=True, exist_ok=True)
        if logf.exists():  # keep the last run's log (a crash) beside the new one
            os.replace(logf, logf.with_name(logf.name + ".1"))
        try:
            live.proc = start_nydusd(
                rec.command(), logf, timeout=self.cfg.daemon_ready_timeout, new_session=True
            )
        except NydusError as exc:
            raise DaemonFailure(str(exc)) from exc
        rec.pid = live.proc.pid
        log.info("nydusd %s (pid %d) RUNNING at %s", rec.id, rec.pid, rec.mountpoint)
        self._save_daemon(rec)
        self._watch(live)

    def _restart(self, live: _Live) -> None:
        self._stop(live)
        self._start(live)
        if live.record.mode == "shared":
            for img in self._images.values():
                if img.daemon == live.record.id:
                    self._api_mount(live.record, img)
        log.info("nydusd %s restarted", live.record.id)

    def _stop(self, live: _Live) -> None:
        live.stop.set()
        if live.proc is not None:
            live.proc.stop()  # ours: SIGTERM, wait (reaps it), clear its mount
            live.proc = None
        else:
            stop_pid(live.record.pid)
            unmount_all(live.record.mountpoint)

    def _paths(self, did: str) -> tuple[str, str]:
        return (
            str(self.root / "socket" / did / "api.sock"),
            str(self.root / "logs" / did / "nydusd.log"),
        )

    def _shared(self) -> _Live:
        live = self._daemons.get(SHARED_ID)
        if live is not None:
            if not self._alive(live.record):
                self._restart(live)
            return live
        sock, logf = self._paths(SHARED_ID)
        rec = DaemonRecord(
            SHARED_ID, "shared", str(self.root / "mnt"), sock, logf,
            find_nydusd(self.cfg.nydusd_path or None),
            threads=self.cfg.threads_number, log_level=self.cfg.log_level,
        )  # fmt: skip
        live = _Live(rec)
        self._start(live)
        self._daemons[SHARED_ID] = live
        return live

    def _api_mount(self, rec: DaemonRecord, img: ImageRecord) -> None:
        body = {
            "source": img.bootstrap,
            "fs_type": "rafs",
            "config": Path(img.config_path).read_text(),
        }
        _api(rec.apisock, "POST", f"v1/mount?mountpoint=/{img.sid}", body,
             self.cfg.daemon_ready_timeout)  # fmt: skip

    # -- images --------------------------------------------------------------------------

    def _probe(self, doc: dict[str, Any], blob_ids: list[str]) -> None:
        """Fail the Prepare now, before any daemon runs, when the registry cannot serve the
        image's first blob (unreachable host, wrong repo, bad credentials)."""
        backend = doc["device"]["backend"]
        if backend.get("type") != "registry" or not blob_ids:
            return
        from nydus.oci.auth import Credentials
        from nydus.oci.registry import RegistryClient

        b = backend["config"]
        creds = None
        if b.get("auth"):
            creds = Credentials.from_auth(b["auth"])
        elif b.get("registry_token"):
            creds = Credentials(registry_token=b["registry_token"])
        client = RegistryClient(
            b["host"],
            insecure=b.get("scheme") == "http",
            skip_verify=bool(b.get("skip_verify")),
            credentials=creds,
            timeout=min(10.0, float(b.get("timeout") or 10)),
            retries=0,
        )
        try:
            size = client.stat_blob(b["repo"], "sha256:" + blob_ids[0])
        except NydusError as exc:
            raise DaemonFailure(f"registry {b['host']} cannot serve {b['repo']}: {exc}") from exc
        finally:
            client.close()
        if size is None:
            raise DaemonFailure(
                f"registry {b['host']}: blob sha256:{blob_ids[0]} of {b['repo']} not found"
            )

    def attach(self, meta_id: int, bootstrap_dir: Path, labels: Any) -> str:
        with self._lock:
            img = self._images.get(meta_id)
            if img is not None:
                live = self._daemons.get(img.daemon)
                if live is not None and self._alive(live.record):
                    return img.lowerdir
                if live is not None:
                    self._restart(live)
                    return img.lowerdir
            return self._attach_new(meta_id, bootstrap_dir, dict(labels))

    def _attach_new(self, sid: int, fs_dir: Path, labels: dict[str, str]) -> str:
        boot = find_bootstrap(fs_dir)
        text = L.image_ref(labels)
        if not text:
            raise SnapshotInvalid(
                f"nydus bootstrap layer {sid} has no image reference label "
                f"({L.CRI_IMAGE_REF} or {L.STARGZ_REFERENCE})"
            )
        try:
            ref = Reference.parse(text)
        except NydusError as exc:
            raise SnapshotInvalid(f"bad image reference {text!r}: {exc}") from exc
        log.info("mounting image %s (bootstrap snapshot %d, %s mode)", text, sid,
                 self.cfg.daemon_mode)  # fmt: skip
        doc = nydusd_config(self.cfg.nydusd_config, str(self.cache_dir), sid, ref, labels)
        self._probe(doc, blob_ids_of(boot))
        config_text = json.dumps(doc, indent=2)
        if self.cfg.daemon_mode == "shared":
            live = self._shared()
            cfg_path = self.root / "config" / SHARED_ID / str(sid) / "config.json"
            _write_private(cfg_path, config_text)
            img = ImageRecord(
                sid, SHARED_ID, str(boot), str(cfg_path), str(self.root / "mnt" / str(sid)), text
            )
            try:
                self._api_mount(live.record, img)
            except BaseException:
                shutil.rmtree(cfg_path.parent, ignore_errors=True)
                raise
        else:
            did = secrets.token_hex(8)
            cfg_path = self.root / "config" / did / "config.json"
            _write_private(cfg_path, config_text)
            sock, logf = self._paths(did)
            mnt = str(fs_dir.parent / "mnt")
            rec = DaemonRecord(
                did, "dedicated", mnt, sock, logf, find_nydusd(self.cfg.nydusd_path or None),
                config=str(cfg_path), bootstrap=str(boot), threads=self.cfg.threads_number,
                log_level=self.cfg.log_level,
            )  # fmt: skip
            live = _Live(rec)
            try:
                self._start(live)
            except BaseException:
                self._forget_daemon(did)
                raise
            self._daemons[did] = live
            img = ImageRecord(sid, did, str(boot), str(cfg_path), mnt, text)
        self._images[sid] = img
        self._save_image(img)
        log.info("image %s (snapshot %d) mounted at %s", text, sid, img.lowerdir)
        return img.lowerdir

    def _forget_daemon(self, did: str) -> None:
        self._daemons.pop(did, None)
        self._store().drop_record(f"daemon/{did}")
        for sub in ("config", "socket", "logs"):
            shutil.rmtree(self.root / sub / did, ignore_errors=True)

    def detach(self, meta_id: int) -> None:
        with self._lock:
            img = self._images.pop(meta_id, None)
            if img is None:
                return
            self._store().drop_record(f"image/{meta_id}")
            live = self._daemons.get(img.daemon)
            if live is None:
                return
            if live.record.mode == "shared":
                try:
                    _api(live.record.apisock, "DELETE", f"v1/mount?mountpoint=/{meta_id}")
                except DaemonFailure as exc:
                    log.warning("detach of image %d from the shared nydusd: %s", meta_id, exc)
                shutil.rmtree(Path(img.config_path).parent, ignore_errors=True)
            else:
                self._stop(live)
                self._forget_daemon(img.daemon)
            log.info("image %s (snapshot %d) detached", img.ref, meta_id)

    def cleanup(self, live_meta_ids: set[int]) -> list[str]:
        removed: list[str] = []
        with self._lock:
            for sid in sorted(set(self._images) - live_meta_ids):
                self.detach(sid)
            known = set(self._daemons)
            for sub in ("config", "socket", "logs"):
                d = self.root / sub
                if not d.is_dir():
                    continue
                for entry in os.listdir(d):
                    if entry not in known:
                        shutil.rmtree(d / entry, ignore_errors=True)
                        removed.append(str(d / entry))
            wanted: set[str] = set()
            for sid in live_meta_ids:
                fs_dir = self.root / "snapshots" / str(sid) / "fs"
                for cand in (fs_dir / "image" / "image.boot", fs_dir / "image.boot"):
                    if cand.is_file():
                        wanted.update(blob_ids_of(cand))
            removed += self._gc_cache(wanted)
        return removed

    def _gc_cache(self, wanted: set[str]) -> list[str]:
        removed: list[str] = []
        if not self.cache_dir.is_dir():
            return removed
        for name in os.listdir(self.cache_dir):
            blob = name.split(".", 1)[0]  # <id>, <id>.blob.data, <id>.blob.meta, ...
            if blob in wanted:
                continue
            p = self.cache_dir / name
            try:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(str(p))
            except OSError as exc:
                log.warning("cannot remove cache file %s: %s", p, exc.strerror)
        return removed
