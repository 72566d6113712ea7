"""Giving memory back after a burst.

A burst waits in the SUB socket's receive queue (libzmq allocates each message
in its I/O thread); once the daemon has worked through it, glibc keeps the
freed pages in its arenas, so the process would stay at its peak size for
good. ``release()`` asks glibc to return them (``malloc_trim``); where the C
library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def release() -> bool:
    """Return freed heap memory to the OS; True if anything was given back."""
    return bool(_malloc_trim and _malloc_trim(0))
