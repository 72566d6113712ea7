"""Giving memory back after a burst.

A burst waits in the SUB socket's receive queue (libzmq allocates each message
in its I/O thread); once the daemon has worked through it, glibc keeps the
freed pages in its arenas, so the process would stay at its peak size for
good. ``release()`` asks glibc to return them (``malloc_trim``); where the C
library is not glibc it does nothing. ``AfterBursts`` says when.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def release() -> bool:
    """Return freed heap memory to the OS; True if anything was given back."""
    return bool(_malloc_trim and _malloc_trim(0))


class AfterBursts:
    """When to give memory back: once a burst has been worked through (a batch short of full,
    or none), again a second later for what was still being freed, and at once after a
    batch of big messages."""

    def __init__(self, big_batch_bytes: int) -> None:
        self.big = big_batch_bytes
        self.behind = False  # the receive queue held more than a batch: a burst is being worked through
        self.again_at = 0.0  # monotonic; 0 when no second release is due

    def batch_done(self, full: bool, nbytes: int) -> None:
        if nbytes >= self.big:
            release()
        if full:
            self.behind, self.again_at = True, time.monotonic() + 1.0
        elif self.behind:
            self.behind = False
            release()

    def tick(self) -> None:
        if self.again_at and time.monotonic() >= self.again_at:
            self.again_at = 0.0
            release()
