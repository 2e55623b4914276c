"""The HTTP API on the unix socket: documented shapes, errors, keep-alive, exit; nydusctl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from nydus.format.blobmeta import parse_toc
from nydus.format.rafs import open_bootstrap
from tests.daemon.conftest import copy_tree, is_mounted, localfs_config
from tests.golden import V6_BLOB_ID, golden_path

FOP_COUNT = 15
READ, GETXATTR, LISTXATTR = 4, 6, 7


def _start(nydusd, tmp_path, **extra):
    blobs = copy_tree(golden_path("upstream", "v6", "blobs"), tmp_path / "blobs")
    cfg = localfs_config(blobs, validate=True, cache_dir=tmp_path / "cache", **extra)
    cfg["device"]["backend"]["config"]["dir"] = str(blobs)
    return nydusd(
        golden_path("upstream", "v6", "bootstrap"),
        cfg,
        "--id",
        "daemon-1",
        "--supervisor",
        str(tmp_path / "sup.sock"),
    )


def _blob_layout() -> tuple[dict[str, int], int, int]:
    """The v6 golden blob: compressed size of each ToC section, the ToC's own size and the
    size of the uncompressed data."""
    sb = open_bootstrap(golden_path("upstream", "v6", "bootstrap").read_bytes())
    (blob,) = sb.blobs
    data = (golden_path("upstream", "v6", "blobs") / blob.blob_id).read_bytes()
    sections = {e.name: e.compressed_size for e in parse_toc(data[-blob.blob_toc_size :])}
    return sections, blob.blob_toc_size, blob.uncompressed_size


def test_daemon_info(nydusd, tmp_path):
    d = _start(nydusd, tmp_path)
    r = d.get("/api/v1/daemon")
    assert r.status_code == 200
    assert r.headers["server"] == "Nydus API"
    assert r.headers["content-type"] == "application/json"
    info = r.json()
    assert set(info["version"]) == {"package_ver", "git_commit", "build_time", "profile", "rustc"}
    assert info["version"]["package_ver"] == "0.1.0"
    assert info["id"] == "daemon-1"
    assert info["supervisor"] == str(tmp_path / "sup.sock")
    assert info["state"] == "RUNNING"
    inst = info["backend_collection"]["/"]
    assert inst["backend_type"] == "Rafs"
    assert inst["mountpoint"] == "/"
    assert inst["mounted_time"].endswith("Z")
    cfg = inst["config"]
    assert cfg["version"] == 2
    assert cfg["backend"]["type"] == "localfs"
    assert cfg["backend"]["localfs"]["dir"] == str(tmp_path / "blobs")
    assert cfg["cache"]["type"] == "blobcache"
    assert cfg["cache"]["filecache"]["work_dir"] == str(tmp_path / "cache")
    assert cfg["rafs"]["validate"] is True
    v2 = d.get("/api/v2/daemon").json()
    assert v2["state"] == "RUNNING" and "backend_collection" not in v2


def test_metrics_shapes(nydusd, tmp_path):
    d = _start(nydusd, tmp_path, iostats_files=True, latest_read_files=True)
    lib = (d.mountpoint / "lib.rs").read_bytes()
    sync = (d.mountpoint / "sync_io.rs").read_bytes()
    m = d.get("/api/v1/metrics").json()
    assert set(m) == {
        "files_account_enabled",
        "access_pattern_enabled",
        "record_latest_read_files_enabled",
        "measure_latency",
        "id",
        "nr_opens",
        "data_read",
        "block_count_read",
        "fop_hits",
        "fop_errors",
        "fop_cumulative_latency_total",
        "read_latency_dist",
    }
    assert m["data_read"] == len(lib) + len(sync) == 30331
    assert len(m["fop_hits"]) == len(m["fop_errors"]) == FOP_COUNT
    assert len(m["block_count_read"]) == len(m["read_latency_dist"]) == 8
    assert m["fop_hits"][READ] >= 2
    assert sum(m["read_latency_dist"]) == m["fop_hits"][READ]
    assert m["nr_opens"] == 0  # both files closed again
    assert m["files_account_enabled"] is True and m["id"] == "/"
    assert d.get("/api/v1/metrics", id="/").json()["data_read"] == 30331
    assert d.get("/api/v1/metrics", id="/nope").status_code == 404

    files = d.get("/api/v1/metrics/files").json()
    assert files["133"]["data_read"] == 16931 and files["136"]["data_read"] == 13400
    assert set(files["133"]) == {
        "total_fops",
        "data_read",
        "block_count_read",
        "fop_hits",
        "fop_errors",
    }
    assert sorted(d.get("/api/v1/metrics/files", latest="true").json()) == [133, 136]
    assert d.get("/api/v1/metrics/files", latest="true").json() == []  # cleared by the read

    b = d.get("/api/v1/metrics/backend").json()
    assert b["backend_type"] == "localfs"
    # a cold cache fetches the chunk-info array (and its header) and the data of both files,
    # which together are every chunk of the blob; at most it reads each section once, and the ToC
    sections, toc_size, data_size = _blob_layout()
    assert sum((len(f) + 4095) // 4096 * 4096 for f in (lib, sync)) == data_size
    need = sections["image.blob"] + sections["blob.meta"] + sections["blob.meta.header"]
    assert need <= b["read_amount_total"] <= sum(sections.values()) + toc_size
    assert b["read_errors"] == 0
    assert len(b["read_latency_sizes_dist"]) == 8 and len(b["read_latency_sizes_dist"][0]) == 8
    assert sum(b["read_count_block_size_dist"]) == b["read_count"]

    c = d.get("/api/v1/metrics/blobcache").json()
    for key in (
        "underlying_files",
        "store_path",
        "partial_hits",
        "whole_hits",
        "total",
        "entries_count",
        "prefetch_data_amount",
        "prefetch_requests_count",
        "prefetch_workers",
        "prefetch_unmerged_chunks",
        "prefetch_cumulative_time_millis",
        "prefetch_begin_time_secs",
        "prefetch_begin_time_millis",
        "prefetch_end_time_secs",
        "prefetch_end_time_millis",
        "buffered_backend_size",
        "data_all_ready",
    ):
        assert key in c, key
    assert c["store_path"] == str(tmp_path / "cache")
    assert c["underlying_files"] == [str(tmp_path / "cache" / f"{V6_BLOB_ID}.blob.data")]
    assert c["entries_count"] == 1
    assert c["data_all_ready"] is True

    r = d.get("/api/v1/metrics/inflight")
    assert r.status_code == 204 and r.content == b""


def test_errors_and_settings(nydusd, tmp_path):
    d = _start(nydusd, tmp_path)
    with d.api() as c:
        r = c.get("/api/v1/nothing")
        assert r.status_code == 404
        assert r.json()["code"] == "UNDEFINED" and r.json()["message"]
        assert (
            c.post(
                "/api/v1/mount",
                params={"mountpoint": "/sub"},
                json={"source": "x", "fs_type": "rafs", "config": "{}"},
            ).status_code
            == 501
        )
        assert c.put("/api/v1/daemon", json={"log_level": "debug"}).status_code == 204
        r = c.put("/api/v1/daemon", json={"log_level": "loud"})
        assert r.status_code == 400 and "loud" in r.json()["message"]
        assert c.put("/api/v1/daemon", content=b"{not json").status_code == 400
        assert c.get("/api/v1/daemon/backend").status_code == 400  # mountpoint required
        sb = c.get("/api/v1/daemon/backend", params={"mountpoint": "/"}).json()
        assert sb["version"] == 6 and sb["blobs"][0]["blob_id"] == V6_BLOB_ID
        assert c.put("/api/v1/config", json={"registry_auth": "dXNlcjpwYXNz"}).status_code == 204
        assert c.put("/api/v1/config", json={"bogus": "x"}).status_code == 400
        assert c.get("/api/v1/daemon/events").json()["errors"] == []
    # debug logging is on now: a read logs chunk fetches
    (d.mountpoint / "sync_io.rs").read_bytes()
    assert " - DEBUG - " in d.log()
    assert "log level set to debug" in d.log()


def test_idle_connection_stays_open(nydusd, tmp_path):
    """nydus-snapshotter holds a connection and treats a hang-up as daemon death."""
    d = _start(nydusd, tmp_path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.apisock))
    try:
        req = b"GET /api/v1/daemon HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for _ in range(2):
            s.sendall(req)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                assert chunk, "server closed the connection"
                head += chunk
            hdr, _, body = head.partition(b"\r\n\r\n")
            length = int(
                [
                    ln.split(b":")[1]
                    for ln in hdr.split(b"\r\n")
                    if ln.lower().startswith(b"content-length")
                ][0]
            )
            while len(body) < length:
                body += s.recv(65536)
            assert json.loads(body)["state"] == "RUNNING"
            time.sleep(1.5)  # idle: the server must not hang up
        s.settimeout(0.5)
        try:
            assert s.recv(1) != b""  # no EOF (nothing to read either)
        except TimeoutError:
            pass
    finally:
        s.close()


def test_exit_through_api(nydusd, tmp_path):
    d = _start(nydusd, tmp_path)
    with d.api() as c:
        assert c.put("/api/v1/daemon/exit").status_code == 204
    assert d.proc.wait(20) == 0
    assert not is_mounted(d.mountpoint)
    assert not d.apisock.exists()


def test_nydusctl(nydusd, tmp_path):
    d = _start(nydusd, tmp_path)
    (d.mountpoint / "lib.rs").read_bytes()
    ctl = str(Path(sys.executable).parent / "nydusctl")
    r = subprocess.run(
        [ctl, "--sock", str(d.apisock), "--raw", "info"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "RUNNING"
    r = subprocess.run([ctl, "--sock", str(d.apisock), "info"], capture_output=True, text=True)
    assert "Status:" in r.stdout and "RUNNING" in r.stdout
    r = subprocess.run(
        [ctl, "--sock", str(d.apisock), "metrics", "backend"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "localfs" in r.stdout
    r = subprocess.run(
        [ctl, "--sock", str(d.apisock), "--raw", "metrics", "fsstats"],
        capture_output=True,
        text=True,
    )
    assert json.loads(r.stdout)["data_read"] == 16931
    r = subprocess.run(
        [ctl, "--sock", str(d.apisock), "metrics", "cache"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "whole_hits" in r.stdout
    r = subprocess.run(
        [ctl, "--sock", str(tmp_path / "nosock"), "info"], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert len([ln for ln in r.stderr.splitlines() if " - ERROR - " in ln]) == 1
    assert os.path.exists(d.apisock)
