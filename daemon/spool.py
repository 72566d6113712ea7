"""The disk-full spool: record lines the disk refused, held in memory up to a bound.

While the spool holds anything, new lines queue behind it so order and ``seq``
stay continuous. Once the bound is reached, further messages are dropped
*before* they get a ``seq``, and counted, so that the gap record written when
space returns says exactly how many were lost and when.
"""

from __future__ import annotations

from typing import Any

from persist.daemon.record import iso_utc


class Spool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[bytes] = []
        self.bytes = 0
        self.dropped = 0  # over the daemon's life, for status
        self._dropping: dict[str, Any] | None = None

    @property
    def full(self) -> bool:
        return self.bytes >= self.limit

    def add(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)
        self.bytes += sum(map(len, lines))

    def drop(self, received_ns: int) -> None:
        """Count one message that could not be kept."""
        self.dropped += 1
        when = iso_utc(received_ns)
        if self._dropping is None:
            self._dropping = {"dropped": 0, "from": when}
        self._dropping["dropped"] += 1
        self._dropping["to"] = when

    def take_dropped(self) -> dict[str, Any] | None:
        """What was dropped since the last call (for a gap record), or None."""
        dropped, self._dropping = self._dropping, None
        return dropped
