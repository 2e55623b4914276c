"""Request signatures of object stores: AWS Signature Version 4 (S3) and OSS's V1 (HMAC-SHA1).

Pure functions of the request's parts and the keys (no I/O, stdlib only, so signing adds
nothing to nydusd's start-up). Checked against the signatures published in the AWS S3 and
Alibaba Cloud OSS documentation (tests/storage/test_signing.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from urllib.parse import quote

__all__ = [
    "EMPTY_SHA256",
    "UNSIGNED_PAYLOAD",
    "amz_date",
    "oss_authorization",
    "sigv4_authorization",
]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_SPACES = re.compile(r"\s+")


def amz_date(now: dt.datetime | None = None) -> str:
    """`x-amz-date` of `now` (UTC): 20130524T000000Z."""
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _uri_encode(text: str, keep_slash: bool) -> str:
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_authorization(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    payload_sha256: str,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str = "s3",
) -> str:
    """The `Authorization` value of a request signed with AWS Signature Version 4.

    `path` is the decoded object path (`/bucket/key`; S3 encodes it once), `query` the
    decoded parameters, `headers` exactly the headers to sign (they must include `host` and
    `x-amz-date`; S3 also wants `x-amz-content-sha256` = `payload_sha256`).
    """
    signed = {k.lower(): _SPACES.sub(" ", str(v).strip()) for k, v in headers.items()}
    stamp = signed.get("x-amz-date", "")
    if len(stamp) != 16 or "host" not in signed:
        raise ValueError("sigv4: headers need host and x-amz-date (YYYYMMDDTHHMMSSZ)")
    names = sorted(signed)
    canonical_query = "&".join(
        f"{_uri_encode(k, False)}={_uri_encode(v, False)}" for k, v in sorted(query)
    )
    canonical = "\n".join(
        [
            method.upper(),
            _uri_encode(path or "/", True),
            canonical_query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret_access_key).encode(), stamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )


def http_date(timestamp: float | None = None) -> str:
    """An RFC 7231 date (`Date` header): Thu, 17 Nov 2005 18:49:58 GMT."""
    return formatdate(timestamp, usegmt=True)


#: query parameters OSS counts as sub-resources (part of the signed resource)
OSS_SUBRESOURCES = frozenset(
    {"acl", "uploads", "location", "cors", "logging", "website", "referer", "lifecycle"}
    | {"delete", "append", "tagging", "objectMeta", "uploadId", "partNumber", "security-token"}
    | {"position", "img", "style", "styleName", "replication", "replicationProgress"}
    | {"replicationLocation", "cname", "bucketInfo", "comp", "qos", "live", "status", "vod"}
    | {"startTime", "endTime", "symlink", "x-oss-process", "response-content-type"}
    | {"response-content-language", "response-expires", "response-cache-control"}
    | {"response-content-disposition", "response-content-encoding", "restore"}
)


def oss_authorization(
    method: str,
    bucket: str,
    key: str,
    headers: Mapping[str, str],
    *,
    access_key_id: str,
    access_key_secret: str,
    query: Sequence[tuple[str, str]] = (),
) -> str:
    """The `Authorization` value of an OSS request signed with the V1 algorithm:
    `OSS <id>:base64(hmac-sha1(secret, VERB\\nContent-MD5\\nContent-Type\\nDate\\n
    CanonicalizedOSSHeaders CanonicalizedResource))`. `headers` must hold `Date`."""
    lower = {k.lower(): str(v).strip() for k, v in headers.items()}
    if "date" not in lower:
        raise ValueError("oss: the request needs a Date header")
    oss_headers = "".join(f"{k}:{lower[k]}\n" for k in sorted(lower) if k.startswith("x-oss-"))
    resource = f"/{bucket}/{key}" if bucket else "/"
    subs = sorted((k, v) for k, v in query if k in OSS_SUBRESOURCES)
    if subs:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subs)
    to_sign = "\n".join(
        [
            method.upper(),
            lower.get("content-md5", ""),
            lower.get("content-type", ""),
            lower["date"],
            oss_headers + resource,
        ]
    )
    digest = hmac.new(access_key_secret.encode(), to_sign.encode(), hashlib.sha1).digest()
    return f"OSS {access_key_id}:{base64.b64encode(digest).decode()}"
