"""What is in a log, counted: records per topic and per sender, the recent rate, disk use, a status summary.

Reads through ``reader`` and ``checkpoints`` only; never writes. ``Tally``
counts incrementally, so ``persist-cli stats --watch`` reads each record once.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from typing import Any

from persist.daemon.log import checkpoints, reader
from persist.daemon.log.layout import LogDir

CHECKPOINT_KEYS = ("id", "label", "reason", "created_at", "last_seq")


class Tally:
    """Per-topic and per-sender counts, kept up to date incrementally."""

    def __init__(self, window: float = 60.0) -> None:
        self.topics: Counter = Counter()
        self.senders: Counter = Counter()
        self.times: list[str] = []  # received_at of the records within the last ``window`` seconds
        self.window = window
        self.after = 0

    def update(self, log: LogDir, now: float | None = None) -> None:
        """Count the records written since the last update."""
        for e in reader.records(log, self.after):
            self.after = e.seq
            self.topics[e.rec["topic"]] += 1
            sender = e.rec.get("meta", {}).get("sender")
            if sender is not None:
                self.senders[str(sender)] += 1
            self.times.append(e.rec["received_at"])
        now = time.time() if now is None else now
        window_start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - self.window))
        self.times = [t for t in self.times if t >= window_start]

    def as_dict(self, log: LogDir) -> dict[str, Any]:
        return {"records": sum(self.topics.values()), "rate_last_minute": len(self.times) / self.window,
                "topics": dict(self.topics.most_common()), "senders": dict(self.senders.most_common()),
                "checkpoints": [{k: m[k] for k in ("id", "reason", "created_at", "last_seq")}
                                for m in checkpoints.readable(log)]}


def log_bytes(log: LogDir) -> int:
    """The bytes of every segment now."""
    return sum(nbytes for _, nbytes in reader.sizes(log))


def disk(log: LogDir) -> dict[str, int]:
    return {"log_bytes": log_bytes(log), "disk_free_bytes": shutil.disk_usage(log.root).free}


def summary(log: LogDir, live: dict[str, Any] | None) -> dict[str, Any]:
    """What ``persist-cli status`` reports: the running daemon's ``live`` status (or None), the newest record,
    the last checkpoint, disk use."""
    last = reader.last_record(log)
    cp = checkpoints.latest(log)
    return {
        "running": live is not None,
        **({k: v for k, v in live.items() if k != "ok"} if live else {}),
        "last_seq": live["last_seq"] if live else (last.seq if last else 0),
        "last_record_at": last.rec["received_at"] if last else None,
        "last_checkpoint": ({k: cp[k] for k in CHECKPOINT_KEYS} if cp else None),
        **disk(log),
        "log_dir": str(log.root.resolve()),
    }
