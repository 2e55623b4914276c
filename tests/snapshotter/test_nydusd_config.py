"""The nydusd config the snapshotter writes for an image: template kept, registry host/repo
from the reference, credentials from the pull labels first, then the Docker config (a
password-only credential as `registry_token`), device id and cache dir."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from nydus.oci.reference import Reference
from nydus.snapshotter.daemons import nydusd_config
from nydus.snapshotter.errors import DaemonFailure

USER_LABEL = "containerd.io/snapshot/pullusername"
SECRET_LABEL = "containerd.io/snapshot/pullsecret"


def _docker_config(directory: Path, auths: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": auths}))


def test_template_reference_and_credentials(tmp_path: Path, monkeypatch) -> None:
    tpl = tmp_path / "tpl.json"
    tpl.write_text(json.dumps({
        "device": {"backend": {"type": "registry", "config": {"scheme": "http", "timeout": 7}},
                   "cache": {"type": "blobcache", "config": {"work_dir": "/elsewhere"}}},
        "mode": "direct", "digest_validate": True,
    }))  # fmt: skip
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    ref = Reference.parse("127.0.0.1:5000/team/app:v1")
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731

    # no credentials anywhere
    doc = nydusd_config(str(tpl), "/cache", 7, ref, {})
    b = doc["device"]["backend"]["config"]
    assert (b["host"], b["repo"], b["scheme"], b["timeout"]) == (
        "127.0.0.1:5000",
        "team/app",
        "http",
        7,
    )
    assert "auth" not in b and "registry_token" not in b
    assert doc["device"]["id"] == "/7" and doc["device"]["cache"]["config"]["work_dir"] == "/cache"
    assert doc["digest_validate"] is True

    # the Docker config, then labels win over it
    _docker_config(tmp_path / "docker", {"127.0.0.1:5000": {"auth": b64("dock:er")}})
    assert nydusd_config(str(tpl), "/c", 1, ref, {})["device"]["backend"]["config"]["auth"] == b64(
        "dock:er"
    )
    labels = {USER_LABEL: "lab", SECRET_LABEL: "el"}
    assert nydusd_config(str(tpl), "/c", 1, ref, labels)["device"]["backend"]["config"][
        "auth"
    ] == b64("lab:el")
    # a secret without a user: a registry token
    b = nydusd_config(str(tpl), "/c", 1, ref, {SECRET_LABEL: "tok"})["device"]["backend"]["config"]
    assert b["registry_token"] == "tok" and "auth" not in b

    # no template file: the built-in default (registry backend, blob cache)
    doc = nydusd_config(str(tmp_path / "absent.json"), "/c", 2, ref, {})
    assert doc["device"]["backend"]["type"] == "registry"
    assert doc["device"]["cache"] == {"type": "blobcache", "config": {"work_dir": "/c"}}


def test_bad_template(tmp_path: Path) -> None:
    ref = Reference.parse("example.com/app:v1")
    for text, words in (("{", "nydusd config template"), ('{"mode": "direct"}', "no `device`")):
        tpl = tmp_path / "t.json"
        tpl.write_text(text)
        with pytest.raises(DaemonFailure, match=words):
            nydusd_config(str(tpl), "/c", 1, ref, {})
