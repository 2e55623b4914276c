"""nydusify's logrus-style log lines: `INFO[2020-10-22T19:16:57+08:00] message`."""

from __future__ import annotations

import logging
import sys
import time


class LogrusFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        off = time.strftime("%z", t)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + off[:3] + ":" + off[3:]
        level = {logging.WARNING: "WARN", logging.CRITICAL: "FATA"}.get(
            record.levelno, record.levelname[:4]
        )
        return f"{level}[{stamp}] {record.getMessage()}"


def setup(level: str = "info") -> None:
    lvl = {
        "trace": logging.DEBUG,
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "warning": logging.WARNING,
        "error": logging.ERROR,
        "fatal": logging.CRITICAL,
        "panic": logging.CRITICAL,
    }.get(level.lower())
    if lvl is None:
        from nydus.errors import NydusError

        raise NydusError(f"invalid log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogrusFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # the builder's own INFO lines are noise inside a conversion
    logging.getLogger("nydus.builder").setLevel(max(lvl, logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
