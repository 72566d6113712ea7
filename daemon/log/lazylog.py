"""Loggers that load structlog only when they first log.

A command that logs nothing (``persist-cli recent``, ``--help``) then starts
without structlog and the asyncio it imports, a good part of a 60 ms budget.
``when_first_used`` registers how logging is to be set up (the CLI's
``logs.setup``); it runs once, just before the first line, whichever thread
writes it. A daemon sets logging up at its start, so nothing is pending there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_setup: list[Callable[[], None]] = []
_setting_up = threading.Lock()


def when_first_used(setup: Callable[[], None]) -> None:
    """Run ``setup`` before the first line any of these loggers writes (now, if structlog is in use already)."""
    _setup.append(setup)


class Logger:
    """``structlog.get_logger(name)``, made on first use."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, method: str) -> Any:
        import structlog

        if _setup:
            with _setting_up:
                while _setup:
                    _setup.pop(0)()
        return getattr(structlog.get_logger(self.name), method)


def get_logger(name: str) -> Logger:
    return Logger(name)
