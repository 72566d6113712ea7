"""The disk-full spool: record lines the disk refused, held in memory up to a bound.

While the spool holds anything, new lines queue behind it so order and ``seq``
stay continuous. Once the bound is reached, further messages are dropped
*before* they get a ``seq``, and counted, so that the gap record written as
soon as the spool takes lines again says exactly how many were lost and when.

``Reserve`` is a little disk space set aside while there is some, given up
only so that the records saying what a full disk cost (a gap, the stop
record) can still be written when the daemon must stop on a full disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from persist.daemon.log.record import iso_utc

RESERVE_BYTES = 64 * 1024


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

    def take(self, count: int) -> None:
        """Forget the first ``count`` lines: they are on disk now."""
        self.bytes -= sum(map(len, self.lines[:count]))
        del self.lines[:count]

    def abandon(self) -> dict[str, Any] | None:
        """Give up every held line and what was dropped (the daemon is stopping on a full disk).

        Returns the gap payload's counts: the held lines never reached the
        disk, so their seq numbers are reused by the records that follow.
        """
        dropped = self.take_dropped() or {"dropped": 0}
        if not self.lines and not dropped["dropped"]:
            return None
        held, self.lines, self.bytes = len(self.lines), [], 0
        self.dropped += held
        return {**dropped, "dropped": dropped["dropped"] + held, "held_in_memory": held}

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


class Reserve:
    """``RESERVE_BYTES`` of disk kept in ``path`` while there is room, freed to write a last word."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keep(self) -> None:
        """Set the space aside (again) if it is not; no room is no error: it is tried again later."""
        try:
            if os.lstat(self.path).st_size >= RESERVE_BYTES:
                return
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Free the space; True if there was some to free."""
        try:
            os.unlink(self.path)
            return True
        except FileNotFoundError:
            return False
