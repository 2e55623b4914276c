"""Log level names as the Nydus tools spell them, one table for every command and the API.

nydusd and nydus-image take Rust's `log` names (trace, debug, info, warn, error, off),
nydusify logrus's (plus fatal, panic). `trace` is its own level below `logging.DEBUG`;
nothing here installs handlers: logging set-up belongs to `cli/`.
"""

from __future__ import annotations

import logging

from nydus.errors import ConfigError

__all__ = ["LEVELS", "OFF", "TRACE", "parse_level"]

#: below logging.DEBUG, as Rust's `trace` is below `debug`
TRACE = 5
#: above every level a record can have
OFF = logging.CRITICAL + 10

#: level name -> logging level
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "off": OFF,
}


def parse_level(name: str) -> int:
    """The logging level of `name` (case-insensitive); ConfigError for an unknown name."""
    level = LEVELS.get(name.lower())
    if level is None:
        raise ConfigError(f"invalid log level {name!r} (trace, debug, info, warn, error)")
    return level
