"""API mounts: a nydusd started without a bootstrap serves several RAFS instances under one
FUSE mount at /<id> (POST/PUT/DELETE /api/v1/mount, `nydusctl mount`/`umount`), each with its
own config, backend and metrics; detached names are gone at once, not cached."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.daemon.conftest import copy_tree, localfs_config
from tests.golden import golden_path

CTL = str(Path(sys.executable).parent / "nydusctl")


def _tree(root: Path) -> dict[str, str]:
    """path -> sha256 of every regular file (or the link target / "dir")."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CTL, "--sock", str(sock), *args], capture_output=True, text=True)


def test_two_instances_under_one_mount(nydusd, tmp_path: Path) -> None:
    v6 = golden_path("upstream", "v6", "bootstrap")
    v5 = golden_path("upstream", "v5", "sha256-nocompress-repeatable")
    configs = {}
    for name, blobs in (("v6", "v6"), ("v5", "v5")):
        d = copy_tree(golden_path("upstream", blobs, "blobs"), tmp_path / f"blobs-{name}")
        cfg = localfs_config(d, validate=True, cache_dir=tmp_path / f"cache-{name}")
        configs[name] = tmp_path / f"{name}.json"
        configs[name].write_text(json.dumps(cfg))
    # the reference trees, each from a daemon of its own
    ref6 = nydusd(v6, json.loads(configs["v6"].read_text()), name="ref6")
    ref5 = nydusd(v5, json.loads(configs["v5"].read_text()), name="ref5")
    want6, want5 = _tree(ref6.mountpoint), _tree(ref5.mountpoint)
    assert want6 and want5

    shared = nydusd(None, None, name="shared")
    assert os.listdir(shared.mountpoint) == []
    sock = shared.apisock
    assert _ctl(sock, "mount", "-s", str(v6), "-c", str(configs["v6"]), "-m", "/a").returncode == 0
    # the name appears at once, though the kernel looked it up (and missed) before
    assert not (shared.mountpoint / "b").exists()
    r = _ctl(sock, "mount", "-s", str(v5), "-c", str(configs["v5"]), "-m", "/b")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(shared.mountpoint)) == ["a", "b"]
    assert _tree(shared.mountpoint / "a") == want6
    assert _tree(shared.mountpoint / "b") == want5
    info = shared.get("/api/v1/daemon").json()
    assert sorted(info["backend_collection"]) == ["/a", "/b"]
    m_a = shared.get("/api/v1/metrics", id="/a").json()
    m_b = shared.get("/api/v1/metrics", id="/b").json()
    assert m_a["id"] == "/a" and m_b["id"] == "/b"
    assert m_a["data_read"] > 0 and m_b["data_read"] > 0 and m_a["data_read"] != m_b["data_read"]
    assert shared.get("/api/v1/metrics").status_code == 400  # two instances: give ?id=

    # errors: one line each, nothing changed
    cases = [
        (("mount", "-s", str(v6), "-c", str(configs["v6"]), "-m", "/a"), "already mounted"),
        (("mount", "-s", str(tmp_path / "none"), "-c", str(configs["v6"]), "-m", "/c"),
         "does not exist"),
        (("mount", "-s", str(v6), "-c", str(configs["v6"]), "-m", "/c/d"), "must be /<name>"),
        (("umount", "-m", "/zz"), "not mounted"),
    ]  # fmt: skip
    for args, words in cases:
        r = _ctl(sock, *args)
        assert r.returncode == 1 and words in r.stderr, (args, r.stderr)
    bad = tmp_path / "bad.json"
    bad.write_text('{"device": {"backend": {"type": "nosuch"}}}')
    r = _ctl(sock, "mount", "-s", str(v6), "-c", str(bad), "-m", "/c")
    assert r.returncode == 1 and "config for /c" in r.stderr
    assert sorted(os.listdir(shared.mountpoint)) == ["a", "b"]

    # detach: the name is gone at once; a new instance under it shows its own tree
    assert _ctl(sock, "umount", "-m", "/a").returncode == 0
    assert sorted(os.listdir(shared.mountpoint)) == ["b"]
    assert not (shared.mountpoint / "a").exists()
    assert shared.get("/api/v1/metrics", id="/a").status_code == 404
    assert _ctl(sock, "mount", "-s", str(v5), "-c", str(configs["v5"]), "-m", "/a").returncode == 0
    assert _tree(shared.mountpoint / "a") == want5
    with shared.api() as c:  # PUT replaces the instance in place
        body = {"source": str(v6), "fs_type": "rafs", "config": configs["v6"].read_text()}
        assert c.put("/api/v1/mount", params={"mountpoint": "/a"}, json=body).status_code == 204
    assert _tree(shared.mountpoint / "a") == want6

    # a daemon that serves one bootstrap at / refuses API mounts
    with ref6.api() as c:
        body = {"source": str(v6), "fs_type": "rafs", "config": configs["v6"].read_text()}
        r = c.post("/api/v1/mount", params={"mountpoint": "/x"}, json=body)
    assert r.status_code == 501 and "--bootstrap" in r.json()["message"]
