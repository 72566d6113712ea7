"""Retention (SPEC section 5): deleting whole closed segments, and only when the user asked.

``storage.retention`` is empty (keep everything) unless set: ``"30d"`` (also
``h``, ``m``, ``s``, ``w``) deletes closed segments whose last write is older
than that; ``"20GiB"`` (also ``MiB``, ``GB``, ``MB``…) keeps the newest
segments that fit in that many bytes, the active one counted first. The active
segment is never deleted. Checkpoints that name a deleted segment stay (their
chain still verifies) but can no longer be restored in full.

Each deletion first writes a tombstone ``segments/<name>.deleted`` (JSON: when,
why, seq range, bytes) atomically, then unlinks the segment: ``verify`` and
``restore`` tell a deliberate deletion from a lost file by it, and a crash in
between is finished at the next pass. On a full disk, where even a tombstone
finds no room, the segment goes first. The daemon logs and records every one,
and applies retention at once when the disk fills.
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log import reader
from persist.daemon.log.fsutil import fsync_dir, write_atomically
from persist.daemon.log.layout import LogDir

UNITS = {
    "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
TIME_UNITS = ("s", "m", "h", "d", "w")
FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


@dataclass(frozen=True)
class Policy:
    """Keep closed segments younger than ``max_age_s``, or the newest within ``max_bytes``."""

    text: str
    max_age_s: float | None = None
    max_bytes: int | None = None


def parse(text: str) -> Policy | None:
    """The policy ``text`` asks for; None for ``""`` (keep everything). ValueError says what is wrong."""
    if not text.strip():
        return None
    m = FORM.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is neither an age such as \"30d\" or \"12h\" nor a size such as \"20GiB\"")
    amount = float(m.group(1)) * UNITS[unit]
    if unit in TIME_UNITS:
        return Policy(text, max_age_s=amount)
    return Policy(text, max_bytes=int(amount))


def tombstone(log: LogDir, name: str) -> Path:
    return log.segments / f"{name}.deleted"


def deleted(log: LogDir, name: str) -> dict[str, Any] | None:
    """The tombstone of segment ``name`` if retention deleted it."""
    try:
        return orjson.loads(tombstone(log, name).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def expired(log: LogDir, policy: Policy, now: float) -> list[Path]:
    """Closed segments past the policy, oldest first."""
    closed = [seg.path for seg in reader.closed_segments(log)]
    if policy.max_age_s is not None:
        return [p for p in closed if now - p.stat().st_mtime > policy.max_age_s]
    kept = log.active.stat().st_size if log.active.exists() else 0
    doomed = []
    for path in reversed(closed):
        kept += path.stat().st_size
        if kept > policy.max_bytes:
            doomed.append(path)
    return doomed[::-1]


def _last_seq(path: Path) -> int | None:
    for line in reader.lines_backward(path):
        try:
            return orjson.loads(line)["seq"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
    return None


def delete(log: LogDir, path: Path, policy: Policy) -> dict[str, Any]:
    """Tombstone, then unlink, one closed segment; what was deleted (for the log and the record)."""
    first = reader.first_record(path)
    info = {
        "segment": path.name,
        "first_seq": first.seq if first else None,
        "last_seq": _last_seq(path),
        "bytes": path.stat().st_size,
        "deleted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "retention": policy.text,
    }
    try:
        write_atomically(tombstone(log, path.name), orjson.dumps(info))
        path.unlink()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        path.unlink()  # a full disk has no room for the tombstone until the segment is gone
        write_atomically(tombstone(log, path.name), orjson.dumps(info))
    fsync_dir(log.segments)
    return info


def apply(log: LogDir, policy: Policy | None, now: float | None = None, confirmed_before: str | None = "") -> list[dict[str, Any]]:
    """Delete what the policy no longer keeps; finish deletions a crash interrupted.

    ``confirmed_before``: when an archive must confirm a segment first, only segments named before this
    one may go (None: none may); ``""`` (the default) means no archive is waited for.
    """
    done = []
    for path in [seg.path for seg in reader.closed_segments(log)]:
        gone = deleted(log, path.name)
        # Tombstoned, then the crash: finish it. A segment that only shares the name (seq
        # numbers start again after an in-place restore) does not match its tombstone: kept.
        if gone and gone.get("bytes") == path.stat().st_size and gone.get("last_seq") == _last_seq(path):
            path.unlink()
            fsync_dir(log.segments)
    if policy is not None:
        for path in expired(log, policy, time.time() if now is None else now):
            if confirmed_before != "" and (confirmed_before is None or path.name >= confirmed_before):
                continue  # the archive has not confirmed it yet: kept
            done.append(delete(log, path, policy))
    return done
