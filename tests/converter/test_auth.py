"""A registry with htpasswd Basic auth: nydusify with credentials from DOCKER_CONFIG, wrong
credentials, nydusd's registry backend with `auth`, and no secret in any output."""

from __future__ import annotations

import base64
import json

import pytest

from tests.converter.conftest import (
    CHECK_FILESYSTEM,
    PASSWORD,
    USER,
    WRONG_PASSWORD,
    convert,
    docker_config,
    get_manifest,
    http,
    nydusify,
    registry_config,
    secrets_in,
)
from tests.converter.images import Layout, make_image, push, rich_layers
from tests.daemon.conftest import run_nydusd
from tests.helpers.env import marked


@pytest.fixture(scope="module")
def private(auth_registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("private")
    layout = Layout(base / "layout")
    layout.add_image("v1", make_image(rich_layers()))
    push(layout, "v1", f"{auth_registry.host}/private/app:v1", creds=f"{USER}:{PASSWORD}")
    good = docker_config(base / "good", auth_registry.host, USER, PASSWORD)
    bad = docker_config(base / "bad", auth_registry.host, USER, WRONG_PASSWORD)
    return {
        "base": base,
        "source": f"{auth_registry.host}/private/app:v1",
        "target": f"{auth_registry.host}/private/app:v1-nydus",
        "good": good,
        "bad": bad,
    }


@marked(*CHECK_FILESYSTEM)
def test_convert_and_check_with_docker_config_credentials(private, auth_registry, tmp_path):
    work = tmp_path / "tmp"
    run = convert(
        private["source"], private["target"], work, env={"DOCKER_CONFIG": str(private["good"])}
    ).ok()
    assert run.lines[-1].endswith(
        f"Success convert image {private['source']} to {private['target']}"
    )
    with http(auth_registry, USER, PASSWORD) as c:
        man, _, _ = get_manifest(c, "private/app", "v1-nydus")
    assert man["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    # check mounts the image with nydusd over the same credentials
    check = nydusify(
        "check",
        "--source",
        private["source"],
        "--target",
        private["target"],
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        str(tmp_path / "out"),
        env={"DOCKER_CONFIG": str(private["good"])},
        cwd=tmp_path,
    ).ok()
    assert any("Verified filesystem" in ln for ln in check.lines)
    for text in (
        run.stdout + run.stderr,
        check.stdout + check.stderr,
        (tmp_path / "out/fs/nydusd.log").read_text(),
    ):
        assert secrets_in(text, PASSWORD) == []
    # the temporary nydusd config holding the credentials is gone
    assert not (tmp_path / "out/fs/nydusd-registry.json").exists()


@pytest.mark.parametrize("creds", ["bad", "none"])
def test_wrong_or_missing_credentials_fail_with_one_clear_line(private, tmp_path, creds):
    env = {"DOCKER_CONFIG": str(private["bad"])} if creds == "bad" else {}
    # no retry storm: a refused login ends the run (a hang would hit the timeout)
    run = convert(
        private["source"], f"{private['target']}-{creds}", tmp_path / "tmp", env=env, timeout=60
    )
    assert run.returncode == 1
    errors = [ln for ln in run.lines if not ln.startswith(("INFO", "WARN"))]
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith("ERRO[") and "authentication failed" in errors[0]
    assert private["source"].split("/")[0] in errors[0]
    assert "Traceback" not in run.stderr
    assert secrets_in(run.stdout + run.stderr, PASSWORD, WRONG_PASSWORD) == []
    assert not (tmp_path / "tmp").exists() or not any((tmp_path / "tmp").rglob("bootstrap"))


def test_nydusd_registry_backend_with_auth(private, auth_registry, nydusd, tmp_path):
    work = tmp_path / "tmp"
    convert(
        private["source"], private["target"], work, env={"DOCKER_CONFIG": str(private["good"])}
    ).ok()
    host, rest = private["target"].split("/", 1)
    boot = work / host / rest / "bootstrap"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    d = nydusd(boot, registry_config(auth_registry.host, "private/app", auth=auth))
    mnt = d.mountpoint
    assert (mnt / "etc/motd").read_bytes() == b"welcome\n"
    assert len((mnt / "srv/data.bin").read_bytes()) == 300_000
    assert (mnt / "var/cache/kept-after-marker").read_bytes() == b"same layer, after the marker\n"
    info = d.get("/api/v1/daemon").json()
    assert secrets_in(json.dumps(info) + d.log(), PASSWORD) == []
    assert d.get("/api/v1/metrics/backend").json()["read_errors"] == 0


def test_nydusd_with_wrong_auth_fails_without_leaking(private, auth_registry, tmp_path):
    work = tmp_path / "tmp"
    convert(
        private["source"], private["target"], work, env={"DOCKER_CONFIG": str(private["good"])}
    ).ok()
    host, rest = private["target"].split("/", 1)
    cfg = tmp_path / "registry.json"
    wrong = base64.b64encode(f"{USER}:{WRONG_PASSWORD}".encode()).decode()
    cfg.write_text(json.dumps(registry_config(auth_registry.host, "private/app", auth=wrong)))
    (tmp_path / "mnt").mkdir()
    done = run_nydusd(
        [
            "--config",
            str(cfg),
            "--mountpoint",
            str(tmp_path / "mnt"),
            "--bootstrap",
            str(work / host / rest / "bootstrap"),
        ]
    )
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "authentication failed" in errors[0], done.stderr
    assert secrets_in(done.stdout + done.stderr, WRONG_PASSWORD, PASSWORD) == []
