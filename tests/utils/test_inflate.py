"""The one gzip decoder (`utils.inflate`): every member's trailer, trailing data and cut
streams, wherever the input's pieces split them, with ISA-L and with the zlib fallback."""

from __future__ import annotations

import gzip
import zlib

import pytest

from nydus.utils import inflate
from nydus.utils.inflate import GzipError, gunzip_pieces
from tests.helpers.layers import F, broken_gzip, layer_bytes

TAR = layer_bytes([F("big", b"a" * 65536 + bytes(range(256)) * 64)])


@pytest.fixture(params=["default", "zlib"])
def decoder(request, monkeypatch):
    if request.param == "zlib":
        monkeypatch.setattr(inflate, "_decompressobj", zlib.decompressobj)
        monkeypatch.setattr(inflate, "_errors", (zlib.error,))
    return request.param


def _decode(data: bytes, step: int) -> bytes:
    return b"".join(gunzip_pieces(data[i : i + step] for i in range(0, len(data), step)))


STEPS = [1, 7, 4096, 1 << 30]


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("crc-after-junk", "invalid gzip data"),
        ("stored-flip", "invalid gzip data"),
        ("trailing-garbage", "trailing data after the gzip stream"),
        ("truncated-trailer", "ends early"),
    ],
)
def test_broken_streams_are_refused(decoder, fault, needle):
    data = broken_gzip(TAR, fault)
    for step in STEPS if len(data) < 1 << 20 else STEPS[2:]:  # no 2 million 1-byte pieces
        with pytest.raises(GzipError, match=needle):
            _decode(data, step)


@pytest.mark.parametrize("step", STEPS)
def test_zeros_then_more_is_trailing_data(decoder, step):
    with pytest.raises(GzipError, match="trailing data"):
        _decode(gzip.compress(TAR) + b"\0" * 100 + gzip.compress(TAR), step)


@pytest.mark.parametrize("step", STEPS)
def test_members_and_zero_padding_are_accepted(decoder, step):
    one = gzip.compress(TAR, mtime=0)
    assert _decode(one, step) == TAR
    assert _decode(one + one, step) == TAR + TAR  # concatenated members: one stream
    assert _decode(one + b"\0" * 1000, step) == TAR  # zero padding, as gzip(1) accepts
