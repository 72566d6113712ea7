"""Stopping on SIGTERM/SIGINT, safely, for the processes with a simple main loop.

A Python signal handler runs in the main thread between two bytecodes of
whatever it was doing, perhaps inside a lock. A handler that takes a lock
(``threading.Event.set`` does) can then wait forever on a lock its own thread
holds: an orphaned indexer was found stuck exactly so. ``StopOnSignal`` only
notes the signal in a plain attribute; the loop looks at it.
(``persist-daemon``'s own loop notes signals through a wakeup fd, in ``loop``.)
"""

from __future__ import annotations

import signal
import time
from typing import Any


class StopOnSignal:
    """Set when one of ``signals`` arrives; ``wait`` sleeps in short steps, never holding a lock."""

    def __init__(self, *signals: signal.Signals) -> None:
        self.signum: int | None = None
        for sig in signals:
            signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def is_set(self) -> bool:
        return self.signum is not None

    def wait(self, timeout: float) -> bool:
        """Sleep until a signal came or ``timeout`` passed; True if a signal came."""
        deadline = time.monotonic() + timeout
        while self.signum is None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.signum is not None
