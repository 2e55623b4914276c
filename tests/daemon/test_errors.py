"""The service's domain errors and the one table that turns them into HTTP statuses."""

from __future__ import annotations

import logging

import pytest

from nydus.daemon.api import status_of
from nydus.errors import (
    ConfigError,
    DigestMismatch,
    FormatError,
    InvalidArgument,
    NotFound,
    NotReady,
    NydusError,
    Unsupported,
)
from nydus.utils.loglevel import LEVELS, TRACE, parse_level


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (NotFound("x"), 404),
        (InvalidArgument("x"), 400),
        (ConfigError("x"), 400),
        (Unsupported("x"), 501),
        (NotReady("x"), 503),
        (FormatError("x"), 500),  # bad bytes on the server's side are not a bad request
        (DigestMismatch("x"), 500),
        (NydusError("x"), 500),
    ],
)
def test_status_of(exc, status):
    assert status_of(exc) == status


def test_log_levels():
    assert parse_level("trace") == TRACE < logging.DEBUG
    assert parse_level("WARN") == parse_level("warning") == logging.WARNING
    assert LEVELS["off"] > logging.CRITICAL
    with pytest.raises(ConfigError, match="invalid log level 'loud'"):
        parse_level("loud")
