"""Object-store addressing and the requests the s3/oss backends send (no OSS server runs
here: the OSS request is checked against the V1 signature recomputed from its own headers,
the algorithm being pinned by the documentation's example in test_signing.py)."""

from __future__ import annotations

import httpx
import pytest

from nydus.config import OssConfig, S3Config, parse_backend_config
from nydus.errors import ConfigError
from nydus.storage import create_backend
from nydus.storage.objstore import ObjectStoreBackend, OssStore, S3Store
from nydus.storage.signing import oss_authorization

BLOB = "ab" * 32


def test_s3_path_style_by_default_and_virtual_host_when_the_endpoint_names_the_bucket():
    path = S3Store(S3Config(region="r", bucket_name="b", endpoint="minio:9000", object_prefix="p/"))
    with httpx.Client() as c:
        req = path.request(c, "GET", path.key(BLOB))
        assert str(req.url) == f"https://minio:9000/b/p/{BLOB}"
        assert "authorization" not in req.headers  # no keys: anonymous
        vhost = S3Store(
            S3Config(
                region="eu-west-1",
                bucket_name="b",
                endpoint="b.s3.eu-west-1.amazonaws.com",
                access_key_id="AK",
                access_key_secret="SK",
            )
        )
        req = vhost.request(c, "GET", vhost.key(BLOB), headers={"Range": "bytes=0-9"})
        assert str(req.url) == f"https://b.s3.eu-west-1.amazonaws.com/{BLOB}"
        auth = req.headers["authorization"]
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AK/")
        assert "/eu-west-1/s3/aws4_request" in auth
        assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date" in auth
    default = S3Store(S3Config(region="us-east-1", bucket_name="b"))
    assert default.host_and_path("k") == ("s3.amazonaws.com", "/b/k")


def test_oss_request_is_virtual_host_with_a_v1_signature():
    store = OssStore(
        OssConfig(
            endpoint="oss-cn-hangzhou.aliyuncs.com",
            bucket_name="images",
            object_prefix="nydus/",
            access_key_id="LTAIexample",
            access_key_secret="secret",
        )
    )
    with httpx.Client() as c:
        req = store.request(c, "GET", store.key(BLOB), headers={"Range": "bytes=10-19"})
    assert str(req.url) == f"https://images.oss-cn-hangzhou.aliyuncs.com/nydus/{BLOB}"
    assert req.headers["host"] == "images.oss-cn-hangzhou.aliyuncs.com"
    expected = oss_authorization(
        "GET",
        "images",
        f"nydus/{BLOB}",
        {"Date": req.headers["date"]},
        access_key_id="LTAIexample",
        access_key_secret="secret",
    )
    assert req.headers["authorization"] == expected


@pytest.mark.parametrize(
    ("btype", "config", "message"),
    [
        ("s3", {"bucket_name": "b"}, "needs `region` and `bucket_name`"),
        ("oss", {"bucket_name": "b"}, "needs `endpoint` and `bucket_name`"),
        (
            "s3",
            {"region": "r", "bucket_name": "b", "endpoint": "http://h:1"},
            "without a scheme",
        ),
        ("s3", {"region": "r", "bucket_name": "b", "scheme": "ftp"}, "http or https"),
    ],
)
def test_bad_object_store_configs_are_one_clear_error(btype, config, message):
    with pytest.raises(ConfigError, match=message):
        create_backend(parse_backend_config(btype, config))


def test_keys_stay_out_of_reprs_and_descriptions():
    cfg = parse_backend_config(
        "s3", {"region": "r", "bucket_name": "b", "access_key_secret": "TOPSECRET"}
    )
    backend = create_backend(cfg)
    try:
        assert isinstance(backend, ObjectStoreBackend)
        assert backend.type_name == "s3"
        assert "TOPSECRET" not in repr(backend.store) + backend.name
    finally:
        backend.close()
