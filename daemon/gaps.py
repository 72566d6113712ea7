"""Loss accounting: which messages the recorder knows it did not get.

``SenderSequences`` follows each sender's own sequence number (``meta.sender_seq``,
stamped by publishers) and names the numbers that never arrived. ``Outage``
remembers when the bus connection dropped. Both only produce the payloads of
``$persist/gap`` records; the loop writes them.
"""

from __future__ import annotations

import time
from typing import Any

from persist.daemon.log.record import iso_utc

MAX_SENDERS = 10_000
MAX_LISTED = 100  # missing numbers listed one by one before only ranges are given
MAX_SENDER_KEY = 256  # sender names followed are at most this long, so the table stays small in bytes
MAX_SENDER_SEQ = 2**53  # larger (or negative) numbers are recorded but not followed: JSON readers lose precision past it


class SenderSequences:
    """Last sequence number seen per sender; reports what was skipped."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}  # insertion order = least recently seen first
        self.missed: dict[str, int] = {}  # numbers each sender skipped, over the daemon's life

    def observe(self, sender: Any, number: Any) -> dict[str, Any] | None:
        """A gap payload if ``number`` skips past the last seen from ``sender``.

        Only a string sender of at most ``MAX_SENDER_KEY`` characters with a
        number in 0..``MAX_SENDER_SEQ`` is followed; anything else is recorded
        as sent and never followed.
        """
        if type(number) is not int or not 0 <= number <= MAX_SENDER_SEQ:
            return None
        if type(sender) is not str or len(sender) > MAX_SENDER_KEY:
            return None  # not a name: not followed, so made-up senders cannot fill memory
        key = sender
        previous = self.last.pop(key, None)
        self.last[key] = number
        if len(self.last) > MAX_SENDERS:
            self.missed.pop(oldest := next(iter(self.last)), None)
            del self.last[oldest]
        if previous is None or number <= previous + 1:
            return None  # first sight, in order, or a restarted publisher
        missing = number - previous - 1
        self.missed[key] = self.missed.get(key, 0) + missing
        gap: dict[str, Any] = {
            "reason": "sender_seq",
            "sender": key,
            "missing_from": previous + 1,
            "missing_to": number - 1,
            "missing_count": missing,
        }
        if missing <= MAX_LISTED:
            gap["missing"] = list(range(previous + 1, number))
        return gap


class Outage:
    """Bus disconnects per endpoint, turned into a gap payload on reconnect."""

    def __init__(self) -> None:
        self.down_since: dict[str, float] = {}

    def disconnected(self, endpoint: str) -> None:
        self.down_since.setdefault(endpoint, time.time())

    def connected(self, endpoint: str) -> dict[str, Any] | None:
        since = self.down_since.pop(endpoint, None)
        if since is None:
            return None
        now = time.time()
        return {
            "reason": "bus_disconnected",
            "endpoint": endpoint,
            "from": iso_utc(int(since * 1e9)),
            "to": iso_utc(int(now * 1e9)),
            "seconds": round(now - since, 3),
        }
