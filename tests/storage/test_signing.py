"""Request signatures against the examples published by the object stores' documentation.

AWS: the four "Signature Calculations in AWS Signature Version 4" examples of the S3 API
reference (sig-v4-header-based-auth: GET Object with Range, PUT Object, GET Bucket
lifecycle, GET Bucket list objects), keys AKIAIOSFODNN7EXAMPLE /
wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, us-east-1, 2013-05-24.
OSS: the V1 example of "Include a V1 signature in the Authorization header" (PUT /nelson of
bucket oss-example, keys 44CF9590006BF252F707 / OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from nydus.storage.signing import (
    EMPTY_SHA256,
    amz_date,
    http_date,
    oss_authorization,
    sigv4_authorization,
)

AWS = {
    "access_key_id": "AKIAIOSFODNN7EXAMPLE",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "region": "us-east-1",
}
HOST = "examplebucket.s3.amazonaws.com"
STAMP = "20130524T000000Z"


def _sig(auth: str) -> str:
    return auth.rsplit("Signature=", 1)[1]


def test_sigv4_get_object_with_range():
    auth = sigv4_authorization(
        "GET",
        "/test.txt",
        [],
        {
            "Host": HOST,
            "Range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": STAMP,
        },
        EMPTY_SHA256,
        **AWS,
    )
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_put_object_encodes_the_key_once():
    payload = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    assert payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    auth = sigv4_authorization(
        "PUT",
        "/test$file.text",
        [],
        {
            "Date": "Fri, 24 May 2013 00:00:00 GMT",
            "Host": HOST,
            "x-amz-date": STAMP,
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": payload,
        },
        payload,
        **AWS,
    )
    assert "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class" in auth
    assert _sig(auth) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


@pytest.mark.parametrize(
    ("query", "signature"),
    [
        ([("lifecycle", "")], "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        (
            [("prefix", "J"), ("max-keys", "2")],
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_sigv4_bucket_requests_sort_the_query(query, signature):
    headers = {"host": HOST, "x-amz-date": STAMP, "x-amz-content-sha256": EMPTY_SHA256}
    assert _sig(sigv4_authorization("GET", "/", query, headers, EMPTY_SHA256, **AWS)) == signature


def test_sigv4_refuses_headers_without_date_or_host():
    with pytest.raises(ValueError, match="x-amz-date"):
        sigv4_authorization("GET", "/", [], {"host": HOST}, EMPTY_SHA256, **AWS)


def test_amz_date_is_utc():
    when = dt.datetime(2013, 5, 24, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert amz_date(when) == STAMP
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


OSS = {
    "access_key_id": "44CF9590006BF252F707",
    "access_key_secret": "OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV",
}


def test_oss_v1_documented_example():
    headers = {
        "Content-Md5": "ODBGOERFMDMzQTczRUY3NUE3NzA5QzdFNUYzMDQxNEM=",
        "Content-Type": "text/html",
        "Date": "Thu, 17 Nov 2005 18:49:58 GMT",
        "Host": "oss-example.oss-cn-hangzhou.aliyuncs.com",
        "X-OSS-Meta-Author": "foo@bar.com",
        "X-OSS-Magic": "abracadabra",
    }
    auth = oss_authorization("PUT", "oss-example", "nelson", headers, **OSS)
    assert auth == "OSS 44CF9590006BF252F707:26NBxoKdsyly4EDv6inkoDft/yA="


def test_oss_v1_signs_subresources_but_not_range_or_other_query():
    base = {"Date": "Thu, 17 Nov 2005 18:49:58 GMT"}
    plain = oss_authorization("GET", "b", "k", base, **OSS)
    # Range and other non-x-oss headers are not part of the string to sign
    assert oss_authorization("GET", "b", "k", {**base, "Range": "bytes=0-9"}, **OSS) == plain
    assert oss_authorization("GET", "b", "k", base, query=[("foo", "1")], **OSS) == plain
    sub = oss_authorization("GET", "b", "k", base, query=[("uploadId", "7"), ("acl", "")], **OSS)
    assert sub != plain
    # same as signing the resource "/b/k?acl&uploadId=7" by hand
    import base64
    import hmac

    text = "GET\n\n\nThu, 17 Nov 2005 18:49:58 GMT\n/b/k?acl&uploadId=7"
    mac = hmac.new(OSS["access_key_secret"].encode(), text.encode(), hashlib.sha1).digest()
    assert sub == f"OSS {OSS['access_key_id']}:{base64.b64encode(mac).decode()}"
    with pytest.raises(ValueError, match="Date"):
        oss_authorization("GET", "b", "k", {}, **OSS)
