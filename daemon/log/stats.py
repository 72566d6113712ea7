"""What is in a log, counted: records per topic and per sender, the recent rate, disk use, a status summary,
and its footprint (span, records, segments, checkpoints) from names, manifests and two lines (``info``).

Reads through ``reader`` and ``checkpoints`` only; never writes. ``Tally``
counts incrementally, so ``persist-cli stats --watch`` reads each record once:
it resumes from the segment and byte offset where the last update stopped
(``reader.lines(log, start=...)``), and reads each checkpoint manifest once.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from typing import Any

from persist.daemon.log import checkpoints, reader, times
from persist.daemon.log.errors import CheckpointError
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
        self.position: tuple[str | None, int] = (None, 0)  # segment and byte offset the next update reads from
        self.manifests: dict[str, dict[str, Any]] = {}  # checkpoint file name → what as_dict shows of it

    def update(self, log: LogDir, now: float | None = None) -> None:
        """Count the records written since the last update, reading only the bytes appended since."""
        for line in reader.lines(log, self.position, after_seq=self.after):
            self.position = (line.segment, line.end)
            e = reader.entry(line.data, line.path)
            if e is None or e.seq <= self.after:
                continue
            self.after = e.seq
            self.topics[e.rec["topic"]] += 1
            sender = e.rec.get("meta", {}).get("sender")
            if sender is not None:
                self.senders[str(sender)] += 1
            self.times.append(e.rec["received_at"])
        now = time.time() if now is None else now
        window_start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - self.window))
        self.times = [t for t in self.times if t >= window_start]

    def checkpoints(self, log: LogDir) -> list[dict[str, Any]]:
        """Every readable checkpoint, oldest first; a manifest already read is not read again."""
        names = sorted(p.name for p in log.checkpoints.glob("*.json")) if log.checkpoints.is_dir() else []
        self.manifests = {n: self.manifests[n] for n in names if n in self.manifests}
        for name in names:
            if name not in self.manifests:
                try:
                    m = checkpoints.load(log.checkpoints / name)
                except CheckpointError:
                    continue  # verify names it; tried again next time
                self.manifests[name] = {k: m.get(k) for k in ("id", "reason", "created_at", "last_seq")}
        return sorted(self.manifests.values(), key=lambda m: (str(m["created_at"] or ""), m["id"]))

    def as_dict(self, log: LogDir) -> dict[str, Any]:
        return {"records": sum(self.topics.values()), "rate_last_minute": len(self.times) / self.window,
                "topics": dict(self.topics.most_common()), "senders": dict(self.senders.most_common()),
                "checkpoints": self.checkpoints(log)}


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


def _tree_bytes(path) -> int:
    """Bytes of every regular file under ``path`` (``lstat``: never follows a link)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _tree_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def footprint(log: LogDir) -> dict[str, Any]:
    """What a log holds, from segment names, the first and last lines and the manifests: no full scan.

    ``records`` is exact without reading them: seq is continuous, so it is the
    last seq minus the first seq still on disk, plus one (system records included).
    """
    segs = reader.sizes(log)
    first = reader.first_record(segs[0][0].path) if segs else None
    last = reader.last_record(log)
    problems: list[str] = []
    cps = checkpoints.listing(log, problems)
    tombstones = sorted(p.name[: -len(".deleted")] for p in log.segments.glob("*.deleted")) if log.segments.is_dir() else []
    span = None
    if first and last:
        span = max(0.0, times.epoch(last.rec["received_at"]) - times.epoch(first.rec["received_at"]))
    return {
        "log_dir": str(log.root.resolve()),
        "first_seq": first.seq if first else None,
        "last_seq": last.seq if last else None,
        "records": (last.seq - first.seq + 1) if first and last else 0,
        "first_at": first.rec["received_at"] if first else None,
        "last_at": last.rec["received_at"] if last else None,
        "duration_s": span,
        "segments": [{"name": seg.name, "first_seq": seg.first_seq, "bytes": n, "active": seg.path == log.active}
                     for seg, n in segs],
        "deleted_segments": tombstones,
        "log_bytes": sum(n for _, n in segs),
        "disk_bytes": _tree_bytes(log.root),
        "checkpoints": {
            "count": len(cps), "labelled": sorted(m["label"] for m in cps if m.get("label")),
            "first_at": cps[0].get("created_at") if cps else None, "last_at": cps[-1].get("created_at") if cps else None,
            "latest": cps[-1]["id"] if cps else None, "unreadable": len(problems),
        },
    }
