"""The Nydus bootstrap layer: gzip(tar) holding `image/image.boot` and, for RAFS v6,
`image/<blob id>.blob.meta` per blob (interfaces.md §1.3). Deterministic: USTAR headers
with uid/gid 0 and mtime 0, two zero blocks at the end and no record padding, gzip with
mtime 0."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass

BLOCK = 512


def _member(name: str, data: bytes | None, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.size = 0
        return info.tobuf(tarfile.USTAR_FORMAT)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % BLOCK)


@dataclass(frozen=True)
class BootstrapLayer:
    gz: bytes  # what is pushed
    digest: str  # sha256 of gz
    diff_id: str  # sha256 of the uncompressed tar


def make_bootstrap_layer(
    bootstrap: bytes,
    blob_metas: list[tuple[str, bytes]],
    extra: list[tuple[str, bytes]] | None = None,
) -> BootstrapLayer:
    """`extra` files go under `image/` after the blob metas (`nydusify optimize` adds
    `prefetch.files`, as upstream's optimizer does)."""
    parts = [_member("image", None, 0o755), _member("image/image.boot", bootstrap, 0o444)]
    for blob_id, meta in blob_metas:
        parts.append(_member(f"image/{blob_id}.blob.meta", meta, 0o444))
    for name, data in extra or []:
        parts.append(_member(f"image/{name}", data, 0o444))
    parts.append(b"\0" * (2 * BLOCK))
    tar = b"".join(parts)
    buf = io.BytesIO()
    # level 6 (Go's and gzip(1)'s default): level 9 costs seconds on a big bootstrap
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(tar)
    data = buf.getvalue()
    return BootstrapLayer(
        data,
        "sha256:" + hashlib.sha256(data).hexdigest(),
        "sha256:" + hashlib.sha256(tar).hexdigest(),
    )


def read_blob_metas(gz_bytes: bytes) -> list[tuple[str, bytes]]:
    """The `image/<blob id>.blob.meta` members of a bootstrap layer, in tar order."""
    from nydus.errors import FormatError

    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(gz_bytes), mode="r:*") as tf:
            for m in tf:
                name = m.name.lstrip("./")
                if m.isfile() and name.startswith("image/") and name.endswith(".blob.meta"):
                    f = tf.extractfile(m)
                    assert f is not None
                    out.append((name[len("image/") : -len(".blob.meta")], f.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FormatError(f"bootstrap layer is not a readable tar: {exc}") from exc
    return out


def read_bootstrap_layer(gz_bytes: bytes) -> bytes:
    """`image/image.boot` (or legacy `image.boot`) from a bootstrap layer."""
    from nydus.errors import FormatError

    try:
        with tarfile.open(fileobj=io.BytesIO(gz_bytes), mode="r:*") as tf:
            for m in tf:
                if m.name.lstrip("./") in ("image/image.boot", "image.boot") and m.isfile():
                    f = tf.extractfile(m)
                    assert f is not None
                    return f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FormatError(f"bootstrap layer is not a readable tar: {exc}") from exc
    raise FormatError("bootstrap layer has no image/image.boot")
