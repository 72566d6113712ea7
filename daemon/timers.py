"""The recorder's timer table: periodic work, each entry a name, a period and a step.

``due()`` runs every step whose time has come; ``soon()`` says when the next
one falls due, for the loop's poll timeout; ``now(name)`` makes one due at
once (retention after a rotation, a SIGHUP or a full disk). This is the one
place a failed tick is caught: it is logged with its step's name and the
recorder goes on, instead of one bad step ending the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from persist.daemon.log.lazylog import get_logger

log = get_logger("persist.daemon")


@dataclass
class Timer:
    name: str
    every: Callable[[], float]  # seconds, read each time: a SIGHUP may change it
    step: Callable[[], None]
    due: float = 0.0  # monotonic


class Timers:
    def __init__(self) -> None:
        self.table: dict[str, Timer] = {}

    def add(self, name: str, every: float | Callable[[], float], step: Callable[[], None], first: float = 0.0) -> None:
        """Run ``step`` every ``every`` seconds, the first time ``first`` seconds from now."""
        period = every if callable(every) else (lambda: every)
        self.table[name] = Timer(name, period, step, time.monotonic() + first)

    def now(self, name: str) -> None:
        """Make ``name`` due at once."""
        self.table[name].due = 0.0

    def soon(self) -> float:
        """Seconds until the next timer is due (0 if one is)."""
        return max(0.0, min(t.due for t in self.table.values()) - time.monotonic()) if self.table else 1.0

    def due(self) -> None:
        """Run every step that is due; a step that raises is logged, never raised."""
        now = time.monotonic()
        for timer in self.table.values():
            if now < timer.due:
                continue
            timer.due = now + timer.every()
            try:
                timer.step()
            except Exception as exc:
                log.exception("tick_failed", step=timer.name, error=repr(exc))
