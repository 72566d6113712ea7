"""``verify``: every line a whole record, seq continuous, records and checkpoints unchanged.

Reads everything once, through the reader's segment resolver (so a rotation
meanwhile skips nothing); reports each problem as one line naming the file,
the line or the checkpoint:

* a line that is not a whole record, a seq that repeats or skips;
* a record after the last checkpoint whose frames no longer match its own
  ``meta.sha256`` (what came before is covered by the checkpoints' hashes);
* with no daemon running, bytes after the last newline of a file: a torn
  tail that ``persist-cli recover`` quarantines (while a daemon runs, they
  are a line still being written);
* every checkpoint problem (``checkpoints.verify``), unreadable manifests included.

A redacted record (``meta.redacted``, SPEC section 14) is checked like any
other: its ``meta.sha256`` is of the frames as recorded. It is counted
(``tally["redacted"]``), since its frames are not the bytes published.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from persist.daemon.log import checkpoints, lock, reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import decode_frames, frames_sha256, is_exact, is_system


def sha256_problem(rec: dict[str, Any], line: bytes) -> str | None:
    """Why a record's frames do not match its ``meta.sha256`` (None when they do, or it has none)."""
    meta = rec.get("meta")
    if is_system(rec) or not isinstance(meta, dict) or "sha256" not in meta:
        return None
    try:
        got = frames_sha256(decode_frames(line, rec))
    except (KeyError, TypeError, ValueError) as exc:
        return f"its frames cannot be decoded ({exc!r})"
    return None if got == meta["sha256"] else "its frames do not match its meta.sha256 (changed after recording)"


def torn_tails(log: LogDir) -> list[str]:
    """Bytes after the last newline of each segment, as problems."""
    problems = []
    for seg, good, size in reader.extents(log):
        if good < size:
            problems.append(f"{seg.path.name}: {size - good} torn byte(s) at the end (from byte {good}); "
                            "run persist-cli recover to quarantine them")
    return problems


def verify(log: LogDir, progress: Callable[[int], None] | None = None, limit: int = 50,
           tally: dict[str, int] | None = None) -> tuple[list[str], int]:
    """``(problems, records)`` for the whole log dir; ``tally["redacted"]``, if given, counts the records
    that are not the bytes published."""
    problems: list[str] = []
    expected: int | None = None
    records = lineno = 0
    segment = None
    last_cp = checkpoints.listing(log, [])  # unreadable manifests are reported by checkpoints.verify
    checked_after = last_cp[-1]["last_seq"] if last_cp else 0
    for line in reader.lines(log):
        lineno = lineno + 1 if line.segment == segment else 1
        segment = line.segment
        if progress:
            progress(len(line.data))
        e = reader.entry(line.data, line.path)
        if e is None:
            problems.append(f"{line.path.name}:{lineno} (byte {line.offset}): not a whole record")
            continue
        records += 1
        if tally is not None and not is_exact(e.rec):
            tally["redacted"] = tally.get("redacted", 0) + 1
        if expected is not None and e.seq != expected:
            why = "repeats" if e.seq < expected else f"skips {e.seq - expected}"
            problems.append(f"{line.path.name}:{lineno}: seq {e.seq} {why} (expected {expected})")
        expected = e.seq + 1
        if e.seq > checked_after and (why := sha256_problem(e.rec, e.line)):
            problems.append(f"{line.path.name}:{lineno}: seq {e.seq}: {why}")
        if len(problems) >= limit:
            return problems + [f"... stopped after {limit} problems"], records
    if not lock.is_locked(log):
        problems += torn_tails(log)
    problems += checkpoints.verify(log)
    return problems, records
