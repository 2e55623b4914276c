"""Logging format and error handling shared by the commands."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from nydus.errors import NydusError
from nydus.utils.loglevel import TRACE, parse_level


def _stamp(created: float) -> str:
    """`2020-10-22T10:22:23+08:00`: local time with the UTC offset."""
    t = time.localtime(created)
    off = time.strftime("%z", t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + off[:3] + ":" + off[3:]


class RustStyleFormatter(logging.Formatter):
    """`2020-10-22T10:22:23+08:00 - INFO - message` as nydus-image and nydusd log."""

    def format(self, record: logging.LogRecord) -> str:
        level = "WARN" if record.levelno == logging.WARNING else record.levelname
        return f"{_stamp(record.created)} - {level} - {record.getMessage()}"


class LogrusFormatter(logging.Formatter):
    """`INFO[2020-10-22T19:16:57+08:00] message` as nydusify logs."""

    def format(self, record: logging.LogRecord) -> str:
        level = {logging.WARNING: "WARN", logging.CRITICAL: "FATA"}.get(
            record.levelno, record.levelname[:4]
        )
        return f"{level}[{_stamp(record.created)}] {record.getMessage()}"


def setup_logging(
    level: str = "info",
    stream: TextIO | None = None,
    formatter: logging.Formatter | None = None,
) -> int:
    """One handler on the root logger (stderr unless `stream`); returns the level set."""
    lvl = parse_level(level)
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter or RustStyleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # httpx logs every request (with full URLs) at INFO: keep that for debugging only
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if lvl <= logging.DEBUG else logging.WARNING)
    return lvl


def run_main(fn: Callable[[], int | None]) -> int:
    """Run a command body: NydusError -> one ERROR line and exit 1; no tracebacks."""
    try:
        return fn() or 0
    except NydusError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{':' if name else ''}{name}")
        return 1


def _error(msg: str) -> None:
    msg = " ".join(msg.split())  # always exactly one line
    if logging.getLogger().handlers:
        logging.getLogger("nydus").error(msg)
    else:
        print(f"ERROR - {msg}", file=sys.stderr)


def parse_size(text: str) -> int:
    t = text.strip().lower()
    try:
        return int(t, 16) if t.startswith("0x") else int(t)
    except ValueError:
        raise NydusError(f"invalid number {text!r}") from None
