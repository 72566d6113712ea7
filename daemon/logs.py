"""Logging through structlog: human lines on a terminal, JSON lines otherwise.

A log line that cannot be written (its file on a full disk, a closed pipe) is
dropped, never raised: the recorder must not stop because its log cannot grow.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

import orjson
import structlog


def _json(_logger: object, _method: str, event: dict) -> str:
    try:
        return orjson.dumps(event, default=str).decode()
    except TypeError:  # an integer past 64 bits, a key that is not a string: a log line never stops us
        return json.dumps(event, default=str)


class _Unfailing:
    """A text stream whose write and flush errors are swallowed."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return self.stream.isatty()


def setup(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once for a process (``fmt``: auto, console or json)."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console else _json
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=_filtering(level),
        logger_factory=structlog.PrintLoggerFactory(_Unfailing(stream)),
        cache_logger_on_first_use=False,  # so that set_level reaches loggers already made
    )


def set_level(level: str) -> None:
    """Log from ``level`` up from now on (a SIGHUP's new ``log_level``), keeping the rest of the setup."""
    structlog.configure(wrapper_class=_filtering(level))


def _filtering(level: str) -> type:
    return structlog.make_filtering_bound_logger(logging.getLevelName(level.upper()))
