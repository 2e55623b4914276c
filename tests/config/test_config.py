"""nydusd config v1/v2 parsing and validation (interfaces.md §4.2, §4.3), against the golden
v1 configs and constructed documents."""

from __future__ import annotations

import base64
import json

import pytest

from nydus.config import (
    LocalFsConfig,
    NydusdConfig,
    RegistryConfig,
    load_config,
    localfs_config,
    parse_config,
)
from nydus.errors import ConfigError
from tests.golden import golden_path


def _golden(name: str):
    return golden_path("nydusd-v1", *name.split("/"))


# ---- golden v1 configs -----------------------------------------------------------------------


@pytest.mark.golden
def test_docs_localfs_is_valid():
    c = load_config(_golden("real/nydus-docs-nydusd-localfs.json")).validate()
    assert c.source_version == 1
    assert c.backend.type == "localfs"
    assert c.backend.localfs == LocalFsConfig(dir="/var/lib/nydus/blobs")
    assert c.cache.type == "blobcache" and c.cache.enabled
    assert c.cache.work_dir == "/var/lib/nydus/cache"
    assert c.rafs.mode == "direct"
    assert c.rafs.validate is False and c.rafs.iostats_files is False
    assert c.rafs.enable_xattr is True
    assert c.rafs.prefetch.enable is False


@pytest.mark.golden
def test_misc_template_fails_validation_for_missing_host():
    c = load_config(_golden("real/nydus-misc-nydusd-config.json"))
    r = c.backend.registry
    assert r is not None and r.retry_limit == 2 and r.ca_cert_files == ("/etc/ssl/certs/my-ca.pem",)
    assert c.rafs.prefetch.enable and c.rafs.prefetch.prefetch_all and c.rafs.prefetch.threads == 8
    with pytest.raises(ConfigError, match="host of the registry backend must not be empty"):
        c.validate()


@pytest.mark.golden
@pytest.mark.parametrize(
    "name",
    ["real/snapshotter-nydusd-config.fusedev.json", "real/snapshotter-nydusd-config-localfs.json"],
)
def test_snapshotter_templates_are_refused_as_is(name):
    """Their blobcache has no `config` object (the snapshotter adds work_dir before use)."""
    with pytest.raises(ConfigError, match="device.cache.config is required"):
        load_config(_golden(name))


@pytest.mark.golden
def test_snapshotter_fusedev_template_after_filling_needs_host_and_repo():
    doc = json.loads(_golden("real/snapshotter-nydusd-config.fusedev.json").read_text())
    doc["device"]["cache"]["config"] = {"work_dir": "/cache"}
    c = parse_config(json.dumps(doc))
    with pytest.raises(ConfigError, match="host"):
        c.validate()
    doc["device"]["backend"]["config"]["host"] = "registry.example.com"
    with pytest.raises(ConfigError, match="repo"):
        parse_config(json.dumps(doc)).validate()
    doc["device"]["backend"]["config"]["repo"] = "library/app"
    c = parse_config(json.dumps(doc)).validate()
    assert c.rafs.batch_size == 1048576


@pytest.mark.golden
def test_snapshotter_runtime_registry_is_valid():
    c = load_config(_golden("constructed/snapshotter-runtime-registry.json")).validate()
    r = c.backend.registry
    assert r is not None
    assert (r.host, r.repo, r.auth, r.retry_limit) == (
        "registry.example.com",
        "library/app",
        "dXNlcjpwYXNz",
        2,
    )
    assert r.credentials() == ("user", "pass")
    assert r.proxy.url == "" and r.proxy.fallback is False  # no url: no proxy
    assert c.id == "/42"
    assert c.cache.work_dir == "/var/lib/containerd/io.containerd.snapshotter.v1.nydus/cache"
    assert c.cache.disable_indexed_map is False
    assert c.rafs.enable_xattr is True
    assert c.rafs.prefetch.enable and c.rafs.prefetch.prefetch_all


@pytest.mark.golden
def test_minimal_valid_registry():
    c = load_config(_golden("constructed/minimal-valid-registry.json")).validate()
    r = c.backend.registry
    assert r is not None and r.scheme == "https" and not r.use_http
    assert r.timeout == 5 and r.connect_timeout == 5 and r.retry_limit == 0
    assert c.cache.type == "" and not c.cache.enabled


@pytest.mark.golden
def test_minimal_valid_localfs_blobcache():
    c = load_config(_golden("constructed/minimal-valid-localfs-blobcache.json")).validate()
    assert c.cache.type == "blobcache" and c.cache.work_dir == "."


@pytest.mark.golden
def test_invalid_blobcache_without_config():
    with pytest.raises(ConfigError, match="device.cache.config is required"):
        load_config(_golden("constructed/invalid-blobcache-without-config.json"))


@pytest.mark.golden
def test_invalid_retry_limit_over_u8():
    with pytest.raises(ConfigError, match=r"retry_limit = 300 is out of range"):
        load_config(_golden("constructed/invalid-retry-limit-over-u8.json"))


@pytest.mark.golden
def test_invalid_auth_without_colon_parses_but_fails_validation():
    c = load_config(_golden("constructed/invalid-auth-without-colon.json"))
    assert c.backend.registry is not None and c.backend.registry.auth == "bm9jb2xvbg=="
    with pytest.raises(ConfigError, match="user:password"):
        c.validate()


@pytest.mark.golden
def test_every_golden_file_is_classified():
    """Each file of the golden folder either parses+validates or fails with a ConfigError."""
    root = golden_path("nydusd-v1")
    seen = 0
    for path in sorted(root.rglob("*.json")):
        seen += 1
        ok = True
        try:
            load_config(path).validate()
        except ConfigError:
            ok = False
        expect_ok = path.name in {
            "nydus-docs-nydusd-localfs.json",
            "minimal-valid-registry.json",
            "minimal-valid-localfs-blobcache.json",
            "snapshotter-runtime-registry.json",
        }
        assert ok == expect_ok, path.name
    assert seen == 10


# ---- the seed's configs and other v1 details ----------------------------------------------------


def test_seed_localfs_and_registry_json():
    seed_localfs = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": "/media/nvme/user/nydus/image/blobs"}}
        },
        "mode": "direct",
    }
    c = parse_config(json.dumps(seed_localfs)).validate()
    assert c.backend.localfs == LocalFsConfig(dir="/media/nvme/user/nydus/image/blobs")
    assert not c.cache.enabled and c.rafs.validate is False
    seed_registry = {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"scheme": "http", "host": "localhost:5000", "repo": "ubuntu"},
            },
            "digest_validate": False,
        },
        "mode": "direct",
    }
    c = parse_config(json.dumps(seed_registry)).validate()
    assert c.backend.registry is not None and c.backend.registry.use_http


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"mode": "lazy"}, "mode 'lazy' must be direct or cached"),
        ({"amplify_io": 0x10000001}, "exceeds"),
        ({"fs_prefetch": {"enable": True, "threads_count": 0}}, "threads 0 must be 1..1024"),
        ({"fs_prefetch": {"enable": True, "threads_count": 2000}}, "1..1024"),
        ({"fs_prefetch": {"enable": True, "merging_size": 0x10000001}}, "exceeds"),
    ],
)
def test_v1_semantic_rules(patch, message):
    doc = {"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}, "mode": "direct"}
    doc.update(patch)
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps(doc)).validate()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mode": "direct"}, "device is required"),
        ({"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}}, "mode is required"),
        ({"device": {"backend": {"config": {}}}, "mode": "direct"}, "type is required"),
        ({"device": {"backend": {"type": "localfs"}}, "mode": "direct"}, "config is required"),
        (
            {"device": {"backend": {"type": "localfs", "config": {"dir": 5}}}, "mode": "direct"},
            "must be a string",
        ),
        (
            {
                "device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}},
                "mode": "direct",
                "digest_validate": "yes",
            },
            "must be true or false",
        ),
        (
            {
                "device": {
                    "backend": {
                        "type": "registry",
                        "config": {"host": "h", "repo": "r", "timeout": -1},
                    }
                },
                "mode": "direct",
            },
            "out of range",
        ),
        ([1, 2], "top level must be an object"),
    ],
)
def test_v1_structure_errors(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps(doc))


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"type": "ftp", "config": {}}, "unknown backend type 'ftp'"),
        (
            {"type": "http-proxy", "config": {"addr": "http://x"}},
            "unknown backend type 'http-proxy'",
        ),
        ({"type": "localfs", "config": {}}, "needs `dir` or `blob_file`"),
        (
            {"type": "registry", "config": {"host": "https://r.example.com", "repo": "a"}},
            "without a scheme",
        ),
        ({"type": "registry", "config": {"host": "r", "repo": "a", "auth": "***"}}, "base64"),
        ({"type": "oss", "config": {"endpoint": "e"}}, "bucket_name"),
        ({"type": "s3", "config": {"bucket_name": "b"}}, "region"),
        ({"type": "localdisk", "config": {}}, "device_path"),
    ],
)
def test_v1_backend_rules(backend, message):
    doc = {"device": {"backend": backend}, "mode": "direct"}
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps(doc)).validate()


@pytest.mark.parametrize(
    ("cache", "ok"),
    [
        ({"type": "blobcache", "config": {"work_dir": "/c"}}, True),
        ({"type": "filecache", "config": {}}, True),
        ({"type": "fscache", "config": {"work_dir": "/c"}}, True),
        ({"type": ""}, True),
        ({"type": "dummycache"}, True),
        ({"type": "memcache", "config": {}}, False),
        ({"type": "blobcache", "config": {"work_dir": ""}}, False),
        ({"type": "blobcache", "config": {"encryption_key": "abc"}}, False),
    ],
)
def test_v1_cache_types(cache, ok):
    doc = {
        "device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}, "cache": cache},
        "mode": "direct",
    }
    if ok:
        parse_config(json.dumps(doc)).validate()
    else:
        with pytest.raises(ConfigError):
            parse_config(json.dumps(doc)).validate()


def test_v1_fs_prefetch_defaults():
    base = {"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}, "mode": "direct"}
    absent = parse_config(json.dumps(base)).rafs.prefetch
    assert (absent.enable, absent.threads, absent.batch_size, absent.prefetch_all) == (
        False,
        0,
        0,
        False,
    )
    present = parse_config(json.dumps({**base, "fs_prefetch": {"enable": True}})).rafs.prefetch
    assert (present.enable, present.threads, present.batch_size, present.prefetch_all) == (
        True,
        8,
        1048576,
        True,
    )


def test_unknown_keys_are_ignored():
    doc = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": "/b", "readahead": False}},
            "cache": {
                "type": "blobcache",
                "config": {"work_dir": "/c", "disable_indexed_map": False},
            },
        },
        "mode": "direct",
        "warmup": 3,
        "id_mapping": [0, 1000, 65536],
        "whatever": {"x": 1},
    }
    parse_config(json.dumps(doc)).validate()


# ---- v2 ------------------------------------------------------------------------------------------

V2_TOML = """
version = 2
id = "my-id"

[backend]
type = "registry"

[backend.registry]
host = "registry.example.com"
repo = "library/busybox"
scheme = "http"
auth = "{auth}"
retry_limit = 3

[cache]
type = "filecache"
validate = true

[cache.filecache]
work_dir = "/var/cache/nydus"

[rafs]
mode = "direct"
validate = true
enable_xattr = true
batch_size = 131072

[rafs.prefetch]
enable = true
threads = 4
"""


def test_v2_toml():
    auth = base64.b64encode(b"alice:s3cret").decode()
    c = parse_config(V2_TOML.format(auth=auth)).validate()
    assert c.source_version == 2 and c.id == "my-id"
    r = c.backend.registry
    assert r is not None and r.repo == "library/busybox" and r.retry_limit == 3
    assert r.credentials() == ("alice", "s3cret")
    assert c.cache.type == "filecache" and c.cache.work_dir == "/var/cache/nydus"
    assert c.cache.validate is True
    assert c.rafs.validate and c.rafs.enable_xattr and c.rafs.batch_size == 131072
    assert c.rafs.prefetch.enable and c.rafs.prefetch.threads == 4
    assert c.rafs.prefetch.prefetch_all is False  # v2 default


def test_v2_json_and_http_proxy():
    doc = {
        "version": 2,
        "backend": {"type": "http-proxy", "http-proxy": {"addr": "/run/p.sock"}},
        "cache": {"type": "dummycache"},
    }
    c = parse_config(json.dumps(doc)).validate()
    assert c.backend.type == "http-proxy" and c.backend.settings.addr == "/run/p.sock"
    doc["backend"]["http-proxy"]["addr"] = "relative.sock"
    with pytest.raises(ConfigError, match="absolute unix socket path"):
        parse_config(json.dumps(doc)).validate()


def test_v2_errors():
    with pytest.raises(ConfigError, match="version must be 2"):
        parse_config('{"version": 3, "backend": {"type": "localfs"}}')
    with pytest.raises(ConfigError, match="backend.localfs is required"):
        parse_config('{"version": 2, "backend": {"type": "localfs"}}')
    with pytest.raises(ConfigError, match="needs a `config` object"):
        parse_config(
            json.dumps(
                {
                    "version": 2,
                    "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
                    "cache": {"type": "filecache"},
                }
            )
        ).validate()
    with pytest.raises(ConfigError, match="must be v2"):
        parse_config('mode = "direct"')
    with pytest.raises(ConfigError, match="invalid JSON"):
        parse_config('{"device": ')
    with pytest.raises(ConfigError, match="neither JSON"):
        parse_config("this is = = not anything")


# ---- redaction and output -------------------------------------------------------------------------


def test_redacted_hides_secrets():
    auth = base64.b64encode(b"alice:s3cret").decode()
    c = parse_config(V2_TOML.format(auth=auth)).validate()
    red = c.redacted()
    assert red.backend.registry.auth == ""
    assert c.backend.registry.auth == auth  # the original is untouched (frozen)
    text = json.dumps(red.to_v2_dict())
    assert auth not in text and "s3cret" not in text
    assert "s3cret" not in c.describe_backend() and auth not in c.describe_backend()
    tok = parse_config(
        json.dumps(
            {
                "device": {
                    "backend": {
                        "type": "registry",
                        "config": {"host": "h", "repo": "r", "registry_token": "TOKEN123"},
                    }
                },
                "mode": "direct",
            }
        )
    )
    assert "TOKEN123" not in json.dumps(tok.redacted().to_v2_dict())
    assert tok.redacted().backend.registry.registry_token == ""
    s3 = parse_config(
        json.dumps(
            {
                "device": {
                    "backend": {
                        "type": "s3",
                        "config": {
                            "region": "r",
                            "bucket_name": "b",
                            "access_key_id": "AK",
                            "access_key_secret": "SK",
                        },
                    }
                },
                "mode": "direct",
            }
        )
    ).redacted()
    assert s3.backend.settings.access_key_secret == "" and s3.backend.settings.access_key_id == ""


@pytest.mark.golden
def test_to_v2_dict_shape_and_roundtrip():
    c = load_config(_golden("real/nydus-docs-nydusd-localfs.json")).validate()
    d = c.to_v2_dict()
    assert d["version"] == 2
    assert d["backend"] == {
        "type": "localfs",
        "localfs": {"blob_file": "", "dir": "/var/lib/nydus/blobs", "alt_dirs": []},
    }
    assert d["cache"]["type"] == "blobcache"
    assert d["cache"]["filecache"]["work_dir"] == "/var/lib/nydus/cache"
    assert d["rafs"]["enable_xattr"] is True
    again = parse_config(json.dumps(d)).validate()
    assert again.backend == c.backend and again.rafs.enable_xattr is True
    assert again.cache.work_dir == c.cache.work_dir


def test_frozen_and_localfs_shorthand():
    c = localfs_config("/blobs")
    assert isinstance(c, NydusdConfig)
    assert c.backend.localfs.dir == "/blobs" and c.cache.work_dir == "/blobs"
    with pytest.raises(AttributeError):
        c.id = "x"  # type: ignore[misc]
    assert RegistryConfig(host="h", repo="r").credentials() is None
    assert c.with_registry_auth("eA==") is c


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.json")
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)
