"""Fixtures for the nydusify tests: real registries (plain and htpasswd), `nydusify` and
`umoci` as subprocesses, our nydusd on a real FUSE mount over the registry backend.

The registries need docker-registry, openssl and skopeo (test images are pushed with it);
`nydusify check --source` and unpacking layers need root (owners, device nodes), the nydusd
fixture root and FUSE. Each is declared where it is needed (tests/helpers/env.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon.conftest import Daemon, api_client, is_mounted, nydusd  # noqa: F401  (fixture)
from tests.helpers.env import fixture_needs
from tests.registry_fixture import REGISTRY_BIN, RunningRegistry, start_registry

NYDUSIFY = str(Path(sys.executable).parent / "nydusify")
LOG_LINE = re.compile(
    r"^(INFO|WARN|ERRO|DEBU|FATA)\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\] "
)
USER, PASSWORD = "alice", "s3cret-Conv3rt-Pa55"
WRONG_PASSWORD = "wr0ng-Pa55-for-alice"


# what a registry of test images needs: the registry, TLS certificates, skopeo to push
REGISTRY_NEEDS = pytest.mark.tools(REGISTRY_BIN, "openssl", "skopeo")
# `nydusify check --source`: unpacks the source image (owners, device nodes) and mounts the
# target with our nydusd over FUSE
CHECK_FILESYSTEM = (
    pytest.mark.root("nydusify check unpacks the source and mounts the target"),
    pytest.mark.kernel("fuse"),
)


@pytest.fixture(scope="module")
@fixture_needs(REGISTRY_NEEDS)
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    r = start_registry(tmp_path_factory.mktemp("registry"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
@fixture_needs(REGISTRY_NEEDS)
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    r = start_registry(tmp_path_factory.mktemp("auth-registry"), htpasswd={USER: PASSWORD})
    yield r
    r.stop()


def docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A DOCKER_CONFIG directory whose config.json holds `user:password` for `host`."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory


def secrets_in(text: str, *passwords: str) -> list[str]:
    """Which of the passwords (or their base64 `user:password` forms) appear in `text`."""
    forms = [*passwords, *(base64.b64encode(f"{USER}:{p}".encode()).decode() for p in passwords)]
    return [s for s in forms if s in text]


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def ok(self) -> Run:
        assert self.returncode == 0, f"{' '.join(self.args)} failed:\n{self.stdout}{self.stderr}"
        return self


def nydusify(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> Run:
    full_env = dict(os.environ)
    full_env.pop("DOCKER_CONFIG", None)
    full_env["HOME"] = str(cwd or Path.cwd())  # never the invoking user's Docker config
    full_env.update(env or {})
    done = subprocess.run(
        [NYDUSIFY, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
    )
    return Run([NYDUSIFY, *args], done.returncode, done.stdout, done.stderr)


def convert(
    source: str,
    target: str,
    work_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Run:
    return nydusify(
        "convert",
        "--source",
        source,
        "--target",
        target,
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(work_dir),
        *extra,
        env=env,
        cwd=work_dir.parent,
        timeout=timeout,
    )


def registry_config(
    host: str, repo: str, *, auth: str | None = None, retry_limit: int = 0, **extra: Any
) -> dict[str, Any]:
    """nydusd's v1 JSON for the registry backend, as the seed's registry.json plus options."""
    backend: dict[str, Any] = {
        "scheme": "http",
        "host": host,
        "repo": repo,
        "retry_limit": retry_limit,
    }
    if auth is not None:
        backend["auth"] = auth
    cfg: dict[str, Any] = {
        "device": {"backend": {"type": "registry", "config": backend}},
        "mode": "direct",
        "digest_validate": True,
        "enable_xattr": True,
    }
    cfg.update(extra)
    return cfg


def http(
    registry: RunningRegistry, user: str | None = None, password: str | None = None
) -> httpx.Client:
    """A plain client of the registry's API (an outside view, no nydus code)."""
    auth = (user, password or "") if user else None
    return httpx.Client(base_url=registry.url, auth=auth, timeout=30)


ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def get_manifest(client: httpx.Client, repo: str, ref: str) -> tuple[dict[str, Any], str, bytes]:
    """(parsed manifest or index, Content-Type, raw bytes)."""
    r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    assert r.status_code == 200, (repo, ref, r.status_code, r.text)
    return r.json(), r.headers["content-type"], r.content


def get_blob(client: httpx.Client, repo: str, digest: str) -> bytes:
    r = client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
    assert r.status_code == 200, (repo, digest, r.status_code)
    return r.content


def wait_meta_loaded(d: Daemon, timeout: float = 30.0) -> None:
    """Wait until the daemon has loaded every blob's chunk metadata (it does so in the
    background once mounted), so that later backend counts are reads only."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        blobs = d.get("/api/v1/daemon/backend", mountpoint="/").json()["blobs"]
        if all(b["meta_loaded"] for b in blobs):
            return
        assert time.monotonic() < deadline, blobs
        time.sleep(0.02)


def read_amount(d: Daemon) -> dict[str, Any]:
    r = d.get("/api/v1/metrics/backend")
    assert r.status_code == 200, r.text
    return r.json()
